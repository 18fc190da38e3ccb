/* model.h - the things the service keeps: plans, customers, subscriptions, payments, audit
 * events and Idempotency-Keys. Plain structs shared by the ledger (the domain rules) and the
 * stores (which keep them); neither HTTP nor any database appears here.
 *
 * A struct with a *_clear owns its strings: release it with that function, which accepts a
 * zeroed struct. */
#ifndef NUMATIX_MODEL_H
#define NUMATIX_MODEL_H

#include <json-c/json.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ids.h"
#include "period.h"
#include "seal.h"

/* The seats one order may take when a plan does not say. */
#define PLAN_MAX_PER_ORDER_DEFAULT 10

struct plan {
	char id[ID_LEN + 1];
	char *name;
	char *description;
	int64_t price_cents;
	/* Its term: interval_count intervals, counted in timezone (period.h); a plan from before
	 * intervals is interval "day" x its duration in days. */
	enum period_unit interval;
	int64_t interval_count;          /* 1...365 (an older plan's days: up to 36500) */
	char timezone[PERIOD_ZONE_MAX + 1];
	bool renews;                     /* renewal "auto" (else "none") */
	int64_t total_capacity;
	int64_t subscriptions_left;
	int64_t subscriptions_held;
	int64_t max_per_order;           /* seats one order may take, 1...1000 */
	int64_t max_per_customer;        /* seats one customer may hold or own; 0: no limit */
	bool waitlist_enabled;           /* buyers may join a waiting list when they cannot buy */
	int64_t waiting;                 /* entries waiting in its line (kept by the store) */
	char status[16];                 /* "active" | "inactive" */
	struct json_object *features;    /* array of strings; one reference owned */
	int64_t created_at, updated_at;  /* ms since the epoch */
};
void plan_clear(struct plan *p);
/* A term's length in whole days (a day or week term), or 0 (months and years vary). */
int64_t term_days(enum period_unit u, int64_t count);

enum plan_field {
	PLAN_F_NAME = 1 << 0,
	PLAN_F_DESCRIPTION = 1 << 1,
	PLAN_F_PRICE = 1 << 2,
	PLAN_F_FEATURES = 1 << 4,
	PLAN_F_STATUS = 1 << 5,
	PLAN_F_CAPACITY = 1 << 6,
	PLAN_F_MAX_ORDER = 1 << 7,
	PLAN_F_MAX_CUSTOMER = 1 << 8,
	PLAN_F_WAITLIST = 1 << 9,
	PLAN_F_INTERVAL = 1 << 10,       /* interval and interval_count, always together */
	PLAN_F_TIMEZONE = 1 << 11,
	PLAN_F_RENEWAL = 1 << 12,
};

/* What a PATCH changes; the strings and features are borrowed for the call. */
struct plan_patch {
	unsigned fields;                 /* enum plan_field bits */
	const char *name;
	const char *description;
	int64_t price_cents;
	enum period_unit interval;
	int64_t interval_count;
	const char *timezone;
	bool renews;
	struct json_object *features;
	const char *status;
	int64_t total_capacity;
	int64_t max_per_order;
	int64_t max_per_customer;        /* 0: no limit */
	bool waitlist_enabled;
};

struct customer {
	char id[ID_LEN + 1];
	char *email;                     /* as given; matched case-insensitively */
	char *name;
	int64_t created_at;
	char processor_id[64];           /* the processor's own customer ("cus_…" at Stripe), or "" */
};
void customer_clear(struct customer *c);

/* A customer signed in (signin.h): a session of 24 hours made from a login link, its token
 * ("cse_<id>_<secret>") kept only as its SHA-256. ended_at: 0 while it lasts. */
struct customer_session {
	char id[ID_LEN + 1];
	char customer_id[ID_LEN + 1];
	char token_hash[65];
	int64_t created_at, expires_at, ended_at;
};

/* A subscription's periods (period.h): counted in its term from anchor_at, where period
 * anchor_index began (a term changed by its plan starts a new anchor at a period's start);
 * period_index is the current one, [period_start, end_at of the subscription). Its end: cancel_at_period_end, or
 * ended_at with cancellation_reason once over. past_due: next_attempt_at is the next try of
 * the renewal that failed, of which attempts were made. */
struct sub_life {
	enum period_unit term_unit;
	int64_t term_count;
	char term_zone[PERIOD_ZONE_MAX + 1];
	int64_t anchor_at, anchor_index, period_index;
	int64_t period_start;            /* 0: a subscription from before periods */
	bool cancel_at_period_end;
	char cancellation_reason[24];    /* "", "requested", "payment_failed" */
	int64_t ended_at;
	int64_t next_attempt_at;         /* past_due: 0 otherwise */
	int64_t attempts;                /* failed renewal charges of this period */
	char payment_method[64];         /* the saved method renewals are charged to */
	char period_payment[32];         /* the renewal charge that paid the current period; "" in its first */
};

/* pending: seats held, payment running or awaited (a checkout session is its pending
 * subscription: open while pending, completed once active, expired once failed or expired);
 * active; failed: declined; expired: hold timed out; cancelled; changed: replaced by a plan
 * change (previous_id of the new one names it). Only pending and active take seats. */
struct subscription {
	char id[ID_LEN + 1];
	char status[16];
	char plan_id[ID_LEN + 1];
	char *plan_name;
	char customer_id[ID_LEN + 1];
	char idem_key[UUID_LEN + 1];
	char payment_id[32];             /* the successful charge, "" before */
	char token_hash[65];             /* SHA-256 of the access token */
	char secret_hash[65];            /* SHA-256 of its checkout session's client secret, or "" */
	/* The Idempotency-Key of the payment attempt that runs or ran last (a purchase's own key, a
	 * session completion's), "" before any, and until when that request owns it. */
	char attempt_key[UUID_LEN + 1];
	int64_t attempt_until;
	char previous_id[ID_LEN + 1];    /* the subscription a plan change replaces, or "" */
	char entry_id[ID_LEN + 1];       /* the waiting-list entry it is the offer of, or "" */
	int64_t quantity;                /* seats it takes */
	int64_t amount_cents;            /* price_cents x quantity: what each period costs */
	int64_t duration_days;           /* a subscription from before terms: its days; else 0 */
	int64_t start_at, end_at;        /* 0 until active; end_at: its current period's end */
	struct sub_life life;            /* its periods and their end */
	int64_t hold_deadline;
	int64_t created_at, updated_at;
	int64_t seq;                     /* the store's order of creation, for paging */
	bool plan_renews;                /* read from its plan: renewal "auto" */
};
void subscription_clear(struct subscription *s);
/* Whether a status takes seats: pending, active, past_due. */
bool sub_takes_seats(const char *status);
/* Whether a status is one of a subscription that was activated (paid, and served): active,
 * past_due, or ended since (ended, cancelled, changed). */
bool sub_was_activated(const char *status);

/* A payment's key: an Idempotency-Key, or a renewal's "<subscription>.<period>.<attempt>". */
#define PAYMENT_KEY_LEN 80
struct payment {
	char id[32];                      /* "pay_" + id */
	char idem_key[PAYMENT_KEY_LEN + 1];
	/* "charge" | "refund" | "renewal" (a period's charge) | "attempt" (a renewal's charge asked
	 * for: "open" until its outcome is settled, then "closed"; no money of its own) */
	char kind[8];
	char status[12];                  /* "succeeded" | "declined" | "pending": a refund recorded,
					     not yet made by the processor (a plan change's credit) */
	char decline_code[32];
	char subscription_id[ID_LEN + 1];
	int64_t amount_cents;
	int64_t created_at;
};

/* A plan's seat counts at one moment. */
struct seat_counts {
	int64_t total, left, held;
};

/* Who acts, for audit events. Borrowed strings. */
struct actor {
	const char *trace_id;
	const char *type;                 /* "admin", "customer", "system" */
	const char *id;                   /* may be NULL */
	const char *ip;                   /* may be NULL */
};

struct audit_event {
	int64_t seq;                      /* commit order within the store */
	char id[ID_LEN + 1];
	int64_t at;
	char action[40];
	char actor_type[16];
	char actor_id[ID_LEN + 8];
	char resource_type[16];
	char resource_id[32];
	char plan_id[ID_LEN + 1];
	bool has_before, has_after;       /* seat counts recorded with the change */
	struct seat_counts before, after;
	char *detail;                     /* JSON text the ledger wrote (a payment), or NULL */
	char trace_id[65];
	char ip[64];
};
void audit_event_clear(struct audit_event *a);

/* A place in a plan's waiting list. Everything its offer needs is made when it joins: the
 * offer's session id, the key the session's row is kept under, and its client secret (kept
 * sealed, ledger_seal, since the entry's holder and the admin read it back; its hash goes on
 * the session). waiting -> offered (a checkout session holds its seats) -> converted (the session
 * completed) | expired (it ran out); waiting or offered -> left. */
struct waitlist_entry {
	char id[ID_LEN + 1];
	char plan_id[ID_LEN + 1];
	char customer_id[ID_LEN + 1];
	int64_t quantity;
	char status[12];
	char token_hash[65];              /* SHA-256 of the entry's access token */
	char session_id[ID_LEN + 1];
	char offer_key[UUID_LEN + 1];
	char offer_secret[SEAL_LEN(TOKEN_LEN) + 1]; /* sealed (or plain: an entry made before) */
	char secret_hash[65];
	int64_t offer_ttl_ms;
	int64_t offer_expires_at;         /* 0 until offered */
	int64_t position;                 /* while waiting, 1 = next; read, never kept */
	int64_t seq;                      /* line order */
	int64_t created_at, updated_at;
};

/* A webhook endpoint: where events are POSTed, signed with its secret. */
#define WEBHOOK_SECRET_LEN 38             /* "whsec_" + 32 hex */
struct webhook {
	char id[ID_LEN + 1];
	char *url;                        /* http:// or https:// */
	char *events;                     /* JSON array text: ["*"] or event types */
	char *description;
	char secret[WEBHOOK_SECRET_LEN + 1];
	char status[12];                  /* "enabled" | "disabled" (it answered 410 Gone) */
	int64_t created_at;
	/* The feed position up to which every event it takes was delivered or failed: its next
	 * event is the first after it. Starts at the feed's last position when created. */
	int64_t cursor;
};
void webhook_clear(struct webhook *w);

/* One event's delivery to one endpoint: its attempts so far. */
struct delivery {
	char endpoint_id[ID_LEN + 1];
	int64_t seq;                      /* the event's feed position */
	char event_id[ID_LEN + 1];
	int attempts;
	int last_status;                  /* the endpoint's HTTP status; 0: no answer */
	char last_error[128];             /* "" or why the last attempt failed */
	char state[12];                   /* "pending" | "delivered" | "failed" */
	int64_t first_attempt_at, next_attempt_at, updated_at;
};

/* A mail of the outbox (outbox.h): written in the unit of the change that caused it, with that
 * change's event, then sent by the mail sender (mailer.h). What it shows is data, rendered at
 * sending by its kind's template; its recipient is its customer's address. */
#define MAIL_KIND_LEN 16
struct mail {
	char id[ID_LEN + 1];              /* "mail_" + id; its Message-ID is made from it */
	char kind[MAIL_KIND_LEN];         /* "receipt", "payment_failed", "ended", "offer", ... */
	char customer_id[ID_LEN + 1];
	char event_id[ID_LEN + 1];        /* the event written in the same unit */
	char *data;                       /* JSON object: the template's values (never a secret) */
	char *secret;                     /* sealed (seal.h), or NULL: a login link's token */
	char status[8];                   /* "queued" | "sent" | "failed" */
	int attempts;
	int64_t next_attempt_at;          /* queued: when it is due */
	char last_error[160];             /* "" or the mail server's last refusal */
	int64_t created_at, updated_at;
	/* check(): the action of the event named by event_id as found in the same snapshot ("" when
	 * there is none) */
	char event_action[40];
};
void mail_clear(struct mail *m);

/* A final answer, stored byte for byte on its Idempotency-Key for replays. */
struct reply {
	int status;
	char *body;                       /* owned where a struct owns it, else borrowed */
};

enum key_state {
	KEY_STARTED,      /* a request runs under its lease */
	KEY_HELD,         /* a purchase holds a seat: subscription_id names it */
	KEY_DONE,         /* finished: reply holds the stored answer */
};

/* An Idempotency-Key as the store keeps it. */
struct key_record {
	char key[UUID_LEN + 1];
	char fingerprint[65];
	enum key_state state;
	int64_t locked_until;             /* the lease of the request that runs it */
	char subscription_id[ID_LEN + 1]; /* KEY_HELD and after, for purchases */
	struct reply reply;               /* KEY_DONE; body owned */
	int64_t created_at;
};
void key_record_clear(struct key_record *k);

#endif
