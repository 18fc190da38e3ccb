/* processor.h - the payment processor seam: a remote service, not a store.
 *
 * A payment is named by its key: the payment attempt's Idempotency-Key, which belongs to one
 * subscription and one attempt. Each operation on it derives the key the processor sees from
 * the payment's key and the operation (and a refund's own key), so that retries, replays and
 * crashes reach the same payment and never make a second one. The ledger knows payments only
 * as it records them (store.h); the processor keeps its own records.
 *
 * Every call returns an outcome, normalised from what the processor said. PAY_UNKNOWN is never
 * guessed at: the payment is looked up later under the same key (by the client's retry, or the
 * reaper) and finished through the same ledger step. */
#ifndef NUMATIX_PROCESSOR_H
#define NUMATIX_PROCESSOR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum pay_outcome {
	PAY_OK,               /* done as asked: authorized, captured, voided, refunded */
	PAY_DECLINED,         /* the card was declined: decline_code */
	PAY_ACTION_REQUIRED,  /* the bank asks the buyer to authenticate: client_secret */
	PAY_UNKNOWN,          /* no answer that tells (timeout, 5xx, connection cut) */
	PAY_INVALID,          /* the processor refused the request itself: msg says why */
};

/* A payment's state at the processor, after a call. */
enum pay_state {
	PAYS_NONE,            /* nothing under this key */
	PAYS_REQUIRES_ACTION,
	PAYS_AUTHORIZED,      /* money held, not yet taken */
	PAYS_CAPTURED,        /* money taken (refunded_cents of it given back) */
	PAYS_VOIDED,          /* the authorization cancelled (or the key closed before any) */
	PAYS_DECLINED,
};

struct pay_result {
	enum pay_outcome outcome;
	enum pay_state state;
	char id[64];                 /* the processor's id of the payment ("pay_…", "pi_…") */
	char refund_id[64];          /* a refund's */
	char decline_code[48];
	char param[48];              /* PAY_INVALID: the request's parameter it was about, or "" */
	char client_secret[128];     /* PAY_ACTION_REQUIRED: for the buyer's page */
	char subscription_id[48];    /* lookup: the subscription it was made for, when the processor keeps it */
	char method[64];             /* the payment method it was made on, when the processor says */
	char trace_id[65];           /* the trace of the request that made it, when the processor keeps it */
	char customer[64];           /* the processor's own customer the call was about, when it keeps them */
	int64_t amount_cents;        /* authorized */
	int64_t refunded_cents;      /* refund: by this call's refund key; lookup: in all */
	char msg[160];               /* for the log; never a secret */
};

struct pay_req {
	const char *key;             /* the payment's key */
	const char *subscription_id;
	const char *customer_id;
	const char *method;          /* a payment method id ("pm_card_visa") */
	int64_t amount_cents;
	bool off_session;            /* charged without the buyer (a saved method) */
	int64_t deadline_ms;         /* wall clock: retries end here (0: the processor's own bound) */
	const char *trace_id;        /* kept with the payment by the simulated processor; may be NULL */
	const char *processor_customer; /* the processor's customer of customer_id as kept, or NULL */
};

/* Which payment a call is about: its key, and what else the caller knows of it. */
struct pay_ref {
	const char *key;
	const char *id;              /* the processor's id of it, or NULL when not known */
	const char *customer_id;     /* the Numatix customer it is of (found by when no id is known) */
	const char *processor_customer; /* the processor's customer of customer_id as kept, or NULL */
};

struct processor;

struct processor_ops {
	const char *name;            /* "sim", "stripe" */
	/* The processor keeps customers of its own (Stripe's Customers): authorize, charge_saved
	 * and lookup say which in out->customer, and take it as processor_customer once it is
	 * kept on the customer's row, never making another. */
	bool customers;
	/* Authorizes amount on the method, once per key: a later call returns the payment as it is
	 * (a key voided before any authorization refuses one: PAY_OK with state PAYS_VOIDED). */
	enum pay_outcome (*authorize)(struct processor *p, const struct pay_req *r, struct pay_result *out);
	/* Authorizes and captures on a saved method without the buyer (a renewal). */
	enum pay_outcome (*charge_saved)(struct processor *p, const struct pay_req *r, struct pay_result *out);
	/* Takes the authorized money of the payment; captured already: PAY_OK. */
	enum pay_outcome (*capture)(struct processor *p, const struct pay_ref *ref, struct pay_result *out);
	/* Cancels the payment's authorization, or (the simulated processor) closes a key that has
	 * none so that no later authorization happens under it; nothing under the key: PAY_OK,
	 * state PAYS_NONE or PAYS_VOIDED; captured already: PAY_INVALID (refund it instead). */
	enum pay_outcome (*cancel)(struct processor *p, const struct pay_ref *ref, struct pay_result *out);
	/* Gives back up to max_cents of a payment's captured money (by the processor's id of it),
	 * once per refund_key: the first call decides the amount (what is left of the payment,
	 * when less), a later one returns it in refunded_cents. */
	enum pay_outcome (*refund)(struct processor *p, const char *payment_id, const char *refund_key,
				   int64_t max_cents, struct pay_result *out);
	/* The payment as the processor has it (PAYS_NONE: nothing under the key). */
	enum pay_outcome (*lookup)(struct processor *p, const struct pay_ref *ref, struct pay_result *out);
	/* Whether an event the processor sent (its raw body and signature header) is its own and
	 * recent at now_s; 0, or -1 with why filled. NULL: the processor sends none. */
	int (*verify_event)(struct processor *p, const char *body, size_t len, const char *signature, int64_t now_s,
			    char *why, size_t whylen);
	void (*close)(struct processor *p);
};

struct processor {
	const struct processor_ops *ops;
};

/* The processor settings name, opened once per process (again in a forked child) on first
 * use; NULL only when the settings were refused (config_load checks them first). Shared by
 * the process's threads. */
struct processor_settings {
	const char *kind;            /* NUMATIX_PROCESSOR: "sim" or "stripe" */
	const char *sim_db;          /* the simulated processor's records (a file path) */
	int latency_ms;              /* the simulated round trip of an authorization */
	const char *stripe_key;      /* NUMATIX_STRIPE_SECRET_KEY */
	const char *stripe_api;      /* NUMATIX_STRIPE_API_BASE */
	const char *currency;        /* NUMATIX_CURRENCY */
	char *const *webhook_secrets; /* NUMATIX_STRIPE_WEBHOOK_SECRET, NULL-terminated, or NULL */
};
struct processor *processor_shared(const struct processor_settings *ps);

/* The simulated processor over its own file (processor_sim.c), and Stripe's API at api_base
 * (processor_stripe.c). New; close with ops->close. */
struct processor *processor_sim_open(const char *path, int latency_ms);
struct processor *processor_stripe_open(const char *secret_key, const char *api_base, const char *currency,
					char *const *webhook_secrets);

/* Stripe's scheme for signed events: header "t=<unix time>,v1=<hex>[,v1=...]", each v1 the
 * HMAC-SHA256 of "<t>.<raw body>" under a secret; valid when one v1 matches one of the secrets
 * (NULL-terminated: two while one is rotated) and t is within tolerance_s of now_s. 0, or -1
 * with why filled. */
#define STRIPE_SIGNATURE_TOLERANCE_S 300
int stripe_signature_check(const char *header, const char *body, size_t len, char *const *secrets, int64_t now_s,
			   int tolerance_s, char *why, size_t whylen);

/* The simulated processor's stand-in for the bank's page: the buyer authenticated the payment
 * under key, which requires action (PAYS_REQUIRES_ACTION -> PAYS_AUTHORIZED); authorized
 * already: 0 too. -1 when p is not the simulated processor, or the payment is in another
 * state (out says which). */
int processor_sim_authenticate(struct processor *p, const char *key, struct pay_result *out);

/* The test method whose bank asks the buyer to authenticate (3-D Secure). */
#define TEST_METHOD_AUTHENTICATION "pm_card_authenticationRequired"

/* The decline code a test payment-method name asks for, or NULL when it succeeds. */
const char *processor_test_decline(const char *method, bool off_session);
const char *pay_outcome_name(enum pay_outcome o);

#endif
