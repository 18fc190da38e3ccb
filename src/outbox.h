/* outbox.h - the mail a change sends. Each is a row of the outbox written in the change's own
 * atomic unit, with its event (struct mail_spec on the event_spec): a receipt with a payment's
 * capture or a renewal, word of a failed renewal with the subscription going past due, word of
 * an end with the end, an offer with a waiting-list offer, a login link with its request. What
 * a mail shows is data kept on the row (ids, names, amounts and times, never a secret; a login
 * link's token is kept apart, sealed), rendered at sending by its kind's
 * template (mail_render.h); nothing here sends (mailer.h does). Each takes the trace of the
 * change that sends it (NULL: none), kept in its data for the mail's X-Trace-Id header. */
#ifndef NUMATIX_OUTBOX_H
#define NUMATIX_OUTBOX_H

#include <stdbool.h>
#include <stdint.h>

#include "model.h"
#include "store.h"

#define MAIL_RECEIPT "receipt"
#define MAIL_PAYMENT_FAILED "payment_failed"
#define MAIL_ENDED "ended"
#define MAIL_OFFER "offer"
#define MAIL_LOGIN "login"
#define MAIL_REMINDER "reminder"

/* Every kind, in a fixed order (metrics count by it); the index of a kind, or -1. */
#define OUTBOX_KINDS 6
extern const char *const outbox_kinds[OUTBOX_KINDS];
int outbox_kind_index(const char *kind);

/* A mail being written: its spec (for the event that sends it) and the data it owns. */
struct outbox_mail {
	struct mail_spec spec;
	char *data;
};
void outbox_mail_clear(struct outbox_mail *m);

/* A payment's receipt (a purchase's charge captured, a renewal, a plan change's difference):
 * the subscription it pays and the period it pays for. */
void outbox_receipt(struct outbox_mail *m, const struct subscription *sub, const struct payment *p,
		    const char *what, const char *trace_id);
/* A renewal declined: the amount, and the next attempt (0: none, the subscription ends). */
void outbox_payment_failed(struct outbox_mail *m, const struct subscription *sub, int64_t next_attempt_at,
			   const char *decline_code, const char *trace_id);
/* A subscription's end: ended at its period's end, or cancelled (reason as kept). */
void outbox_ended(struct outbox_mail *m, const struct subscription *sub, const char *status, int64_t at,
		  const char *trace_id);
/* A waiting-list offer: the entry's session, its seats and its deadline. */
void outbox_offer(struct outbox_mail *m, const struct waitlist_entry *w, const char *trace_id);

/* A period's end coming (NUMATIX_RENEWAL_NOTICE_DAYS before it): its renewal and amount, or its
 * end. */
void outbox_reminder(struct outbox_mail *m, const struct subscription *sub, const char *trace_id);
/* A login link (signin.h): its token only sealed, in the row's secret, and its expiry. */
void outbox_login(struct outbox_mail *m, int64_t expires_at, const char *sealed_token, const char *trace_id);

/* Whether an event of this action may send a mail of this kind (check()'s invariant 7). */
bool outbox_caused_by(const char *kind, const char *action);
/* Whether text holds something shaped like a secret this service makes or keeps (an access
 * token, a client secret, a waiting-list or session token, a signing or API key). */
bool outbox_leaks(const char *text);

#endif
