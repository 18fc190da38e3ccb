/* life.h - a subscription's life after its purchase (DESIGN.md, *A subscription's life*): its
 * periods, the renewal charged at each period's end, dunning after a decline, the end that
 * gives its seats back, and what its holder schedules (cancel at period end, resume, another
 * card). Every move is one atomic unit (a store transition that requires the life as it was
 * read), and every renewal charge is made outside any transaction, keyed by subscription,
 * period and attempt, so that racing renewers, retries and crashes charge a period once. */
#ifndef NUMATIX_LIFE_H
#define NUMATIX_LIFE_H

#include <stdbool.h>
#include <stdint.h>

#include "ledger.h"


/* The end of period `index` of a life, by its term and anchor; -1 when its zone is unknown here. */
int life_period_end(const struct sub_life *l, int64_t index, int64_t *end);
/* The term of a plan, as a life counts it. */
void life_term_of(struct sub_life *l, const struct plan *p);
bool life_same_term(const struct sub_life *a, const struct sub_life *b);
/* Begins l's first period at `at` (its anchor), in the term l has; *end its end. */
int life_begin(struct sub_life *l, int64_t at, int64_t *end);

/* The payment key of a renewal attempt: "<subscription>.<period>.<attempt>.<card>" (the first
 * 8 hex digits of the saved card's SHA-256). */
void life_renewal_key(const struct subscription *s, char key[PAYMENT_KEY_LEN + 1]);

struct life_stats {
	int renewed, past_due, cancelled, ended, refunded, unknown, reminded;
};

/* What is due of one subscription subs_due gave, at now: its renewal charged and settled, a
 * retry, or its end. 0 (done, or left for a later pass), -1 when the store failed. */
int life_due(struct ledger *lg, const struct actor *a, const struct subscription *sub, struct life_stats *st,
	     struct err *e);
/* Renewal charges asked for whose outcome never came and whose subscription has moved on since
 * (another card, an end): looked up under their key, and refunded when taken. */
int life_reconcile(struct ledger *lg, const struct actor *a, struct life_stats *st, struct err *e);
/* Renewals charged after their period was served or ended (recorded "late"): refunded. */
int life_refund_late(struct ledger *lg, const struct actor *a, struct life_stats *st, struct err *e);

/* Reminders of the periods ending in lg->renewal_notice_days days of their plan's calendar (a
 * renewal with its amount, or an end), each period's once: a mail with event
 * subscription.period_ending. A period no longer than the notice gets none. */
int life_remind(struct ledger *lg, const struct actor *a, struct life_stats *st, struct err *e);

/* What is due within the coming days (subs_due at now + days), at most limit, soonest first;
 * *out: new array, free each with subscription_clear. */
int life_coming(struct ledger *lg, int64_t days, int limit, struct subscription **out, size_t *n, struct err *e);

/* What a holder asks: at_end true schedules the end at the period's end (409
 * SUBSCRIPTION_NOT_ACTIVE when it is not active or past due), false resumes it (409
 * NOT_SCHEDULED when nothing was); either is 409 SUBSCRIPTION_ENDED once the period is over,
 * its renewal or its end being made. *out: the subscription after. */
int life_schedule_end(struct ledger *lg, const struct actor *a, const char *id, bool at_end, struct subscription *out,
		      struct err *e);
/* Saves another card for the renewals; a past_due subscription is charged on it at once
 * (*out: after that attempt). */
int life_payment_method(struct ledger *lg, const struct actor *a, const char *id, const char *method,
			struct subscription *out, struct err *e);

#endif
