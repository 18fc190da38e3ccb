/* store.h - the store interface: the operations of the domain, each one atomic unit in the
 * database. Backends (store_sqlite.c, store_pg.c, store_mongo.c) plug in through a table of
 * function pointers and implement each operation with their own strongest primitive.
 * Handlers and services see only these structs, never SQL, BSON or driver types.
 *
 * Every function returns 0 on success and -1 on error with e filled: ERR_NOT_FOUND and
 * ERR_CONFLICT carry the API code (e.g. PLAN_SOLD_OUT); ERR_RETRYABLE and ERR_UNAVAILABLE
 * mean nothing was written and the client may retry. Output structs are filled by the callee
 * and own their strings: release them with the matching *_clear. */
#ifndef NUMATIX_STORE_H
#define NUMATIX_STORE_H

#include <json-c/json.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "err.h"
#include "ids.h"

struct audit_ctx {
	const char *trace_id;
	const char *actor_type;  /* "admin", "customer", "system" */
	const char *actor_id;    /* may be NULL */
	const char *ip;          /* may be NULL */
};

struct plan {
	char id[ID_LEN + 1];
	char *name;
	char *description;
	int64_t price_cents;
	int64_t duration_days;
	int64_t total_capacity;
	int64_t subscriptions_left;
	int64_t subscriptions_held;
	char status[16];                 /* "active" | "inactive" */
	struct json_object *features;    /* array of strings; one reference owned */
	int64_t created_at, updated_at;  /* ms since the epoch */
};
void plan_clear(struct plan *p);

enum plan_field {
	PLAN_F_NAME = 1 << 0,
	PLAN_F_DESCRIPTION = 1 << 1,
	PLAN_F_PRICE = 1 << 2,
	PLAN_F_DURATION = 1 << 3,
	PLAN_F_FEATURES = 1 << 4,
	PLAN_F_STATUS = 1 << 5,
	PLAN_F_CAPACITY = 1 << 6,
};

/* What a PATCH changes; the strings and features are borrowed for the call. */
struct plan_patch {
	unsigned fields;                 /* enum plan_field bits */
	const char *name;
	const char *description;
	int64_t price_cents;
	int64_t duration_days;
	struct json_object *features;
	const char *status;
	int64_t total_capacity;
};

struct customer {
	char id[ID_LEN + 1];
	char *email;                     /* as given; matched case-insensitively */
	char *name;
	int64_t created_at;
};
void customer_clear(struct customer *c);

struct subscription {
	char id[ID_LEN + 1];
	char status[16];                 /* pending|active|failed|expired|cancelled */
	char plan_id[ID_LEN + 1];
	char *plan_name;
	char customer_id[ID_LEN + 1];
	char idem_key[UUID_LEN + 1];
	char payment_id[32];             /* the successful charge, "" before */
	char token_hash[65];             /* SHA-256 of the access token */
	int64_t amount_cents;
	int64_t duration_days;
	int64_t start_at, end_at;        /* 0 until active */
	int64_t hold_deadline;
	int64_t created_at, updated_at;
};
void subscription_clear(struct subscription *s);

/* Claiming an Idempotency-Key. */
enum key_state {
	KEY_NEW,          /* first time: the caller owns the key's lease */
	KEY_RESUME,       /* an earlier request died mid-way; the caller took over its lease */
	KEY_REPLAY,       /* finished: status and body hold the stored response */
	KEY_IN_PROGRESS,  /* another request holds the lease */
	KEY_MISMATCH,     /* same key, another fingerprint */
};

struct key_claim {
	enum key_state state;
	char subscription_id[ID_LEN + 1]; /* the seat hold already taken, "" if none */
	int status;                       /* KEY_REPLAY */
	char *body;                       /* KEY_REPLAY; new */
	int64_t locked_until;             /* KEY_IN_PROGRESS */
};
void key_claim_clear(struct key_claim *k);

/* A final response, stored byte for byte on its key in the same atomic unit. */
struct outcome {
	int status;
	const char *body;
};

struct hold_req {
	const char *subscription_id;      /* made by the service */
	const char *idem_key;
	const char *plan_id;
	const char *customer_id;
	const char *token_hash;
	int64_t now;
	int64_t deadline;
};

struct payment {
	char id[32];                      /* "pay_" + id */
	char idem_key[UUID_LEN + 1];
	char kind[8];                     /* "charge" | "refund" */
	char status[12];                  /* "succeeded" | "declined" */
	char decline_code[32];
	char subscription_id[ID_LEN + 1];
	int64_t amount_cents;
	int64_t created_at;
};

struct hold_ref {
	char subscription_id[ID_LEN + 1];
	char idem_key[UUID_LEN + 1];
};

struct audit_event {
	char id[ID_LEN + 1];
	int64_t at;
	char action[40];
	char actor_type[16];
	char actor_id[ID_LEN + 8];
	char resource_type[16];
	char resource_id[32];
	char plan_id[ID_LEN + 1];
	char *before;                     /* JSON text or NULL */
	char *after;                      /* JSON text or NULL */
	char trace_id[65];
	char ip[64];
};
void audit_event_clear(struct audit_event *a);

struct audit_filter {
	const char *plan_id, *trace_id, *action, *cursor;  /* each may be NULL */
	int limit;
};

struct page {
	int limit;
	const char *cursor;               /* opaque, from an earlier page; may be NULL */
	char next_cursor[32];             /* filled: "" on the last page */
};

/* Reports one violated invariant; check() calls it for each. */
typedef void (*check_report_fn)(void *arg, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

struct store;

struct store_ops {
	const char *name;                 /* "sqlite", "postgresql", "mongodb" */
	void (*close)(struct store *s);
	int (*ping)(struct store *s, struct err *e);
	int (*reset)(struct store *s, struct err *e);

	int (*plan_create)(struct store *s, struct plan *p, const struct audit_ctx *a, struct err *e);
	int (*plan_get)(struct store *s, const char *id, struct plan *out, struct err *e);
	/* status: "active", "inactive" or NULL for all. *out: new array, free each with plan_clear. */
	int (*plan_list)(struct store *s, const char *status, struct plan **out, size_t *n, struct err *e);
	int (*plan_update)(struct store *s, const char *id, const struct plan_patch *patch, int64_t now,
			   const struct audit_ctx *a, struct plan *out, struct err *e);

	int (*customer_create)(struct store *s, struct customer *c, struct err *e);
	int (*customer_get)(struct store *s, const char *id, struct customer *out, struct err *e);
	/* Finds the customer by email (case-insensitive) or creates c, atomically. */
	int (*customer_upsert)(struct store *s, struct customer *c, struct err *e);

	int (*key_claim)(struct store *s, const char *key, const char *fingerprint, int64_t now,
			 int64_t lease_until, struct key_claim *out, struct err *e);
	/* Forgets a key whose request changed nothing, so the key stays usable. */
	int (*key_forget)(struct store *s, const char *key, struct err *e);
	int (*key_finish)(struct store *s, const char *key, const struct outcome *o, int64_t now,
			  struct err *e);
	int (*key_get)(struct store *s, const char *key, struct key_claim *out, struct err *e);

	/* Takes a seat: conditional decrement, a pending subscription, seat.held, the key marked. */
	int (*seat_hold)(struct store *s, const struct hold_req *r, const struct audit_ctx *a,
			 struct subscription *out, struct err *e);
	/* pending -> active if the hold is still live, with sub's start, end and token hash;
	 * subscription.activated; the final response on the key. ERR_CONFLICT HOLD_EXPIRED else. */
	int (*hold_confirm)(struct store *s, const struct subscription *sub, const char *payment_id,
			    int64_t now, const struct outcome *o, const struct audit_ctx *a, struct err *e);
	/* pending -> status ("failed" or "expired"), the seat back, audit, the response on the key.
	 * ERR_CONFLICT if the subscription is no longer pending. */
	int (*hold_release)(struct store *s, const char *sub_id, const char *status, int64_t now,
			    const struct outcome *o, const struct audit_ctx *a, struct err *e);

	/* Inserts p unless a record of p->kind exists for p->idem_key; then p becomes that one.
	 * *existed tells which. */
	int (*payment_record)(struct store *s, struct payment *p, bool *existed,
			      const struct audit_ctx *a, struct err *e);

	int (*sub_get)(struct store *s, const char *id, struct subscription *out, struct err *e);
	int (*sub_cancel)(struct store *s, const char *id, int64_t now, const struct audit_ctx *a,
			  struct subscription *out, struct err *e);
	int (*sub_list)(struct store *s, const char *customer_id, const char *status, struct page *pg,
			struct subscription **out, size_t *n, struct err *e);

	int (*audit_list)(struct store *s, const struct audit_filter *f, struct page *pg,
			  struct audit_event **out, size_t *n, struct err *e);

	/* The reaper's work. A lease is free when its holder let it go or its until passed; the
	 * holder renews it, or releases it by taking it with until 0. */
	bool (*lease_take)(struct store *s, const char *name, const char *holder, int64_t now,
			   int64_t until, struct err *e);
	int (*holds_overdue)(struct store *s, int64_t now, int limit, struct hold_ref **out, size_t *n,
			     struct err *e);
	/* Successful charges whose subscription failed or expired and that have no refund. */
	int (*charges_unsettled)(struct store *s, int limit, struct payment **out, size_t *n,
				 struct err *e);
	/* Deletes finished keys older than before, and unfinished keys without a hold whose lease
	 * ended. *n: how many. */
	int (*keys_purge)(struct store *s, int64_t now, int64_t before, int *n, struct err *e);

	/* Verifies the invariants of DESIGN.md; *violations counts what report was told. */
	int (*check)(struct store *s, check_report_fn report, void *arg, int *violations, struct err *e);
};

struct store {
	const struct store_ops *ops;
};

/* Opens the store the connection string names and creates its schema, idempotently.
 * New, close with store_close. */
struct store *store_open(const char *url, struct err *e);
void store_close(struct store *s);  /* accepts NULL */

/* Backends. */
struct store *store_sqlite_open(const char *url, struct err *e);
struct store *store_mongo_open(const char *url, struct err *e);

/* Shared by the backends. The JSON text of seat counts, and of a payment, in audit events
 * (new, free()); a patch applied to a plan read inside the backend's atomic unit (-1 with
 * CAPACITY_BELOW_SOLD when the capacity would drop below the seats sold or held). */
char *audit_counts_json(int64_t total, int64_t left, int64_t held);
char *audit_payment_json(const struct payment *p);
int plan_apply_patch(struct plan *p, const struct plan_patch *pt, int64_t now, struct err *e);

#endif
