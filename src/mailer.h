/* mailer.h - the mail sender: each pass sends the outbox's due mails (outbox.h) over SMTP
 * (smtp.h), rendered from their data (mail_render.h). A 4xx to a mail's recipient or message is
 * tried again after 10 s, 30 s, 1 min, 5 min and 15 min, then the mail is failed; a 5xx fails it
 * at once; a failed mail writes mail.failed. A server that answers nothing about the mail (down,
 * a timeout, our login or sender refused) ends the pass and spends none of its attempts. At least once: a sender killed after the server took a mail and
 * before it was marked sends it again, with the same Message-ID (made from the row's id). One
 * runs at a time across workers and machines, by a lease in the store: the server's process,
 * or `numatix mail` from cron. Without an SMTP server set, mails stay queued. */
#ifndef NUMATIX_MAILER_H
#define NUMATIX_MAILER_H

#include <stdbool.h>
#include <stdint.h>

#include "ledger.h"
#include "outbox.h"
#include "smtp.h"

#define MAILER_LEASE "mailer"
#define MAIL_RETRIES 5

struct mail_settings {
	struct smtp_settings smtp;   /* url NULL: nothing is sent */
	const char *public_url;
	const char *currency;
};

/* What came of an attempt at a mail, as counted. */
enum mail_outcome { MAIL_SENT, MAIL_DEFERRED, MAIL_FAILED, MAIL_OUTCOMES };

struct mail_stats {
	int sent, deferred, failed;
	int by_kind[OUTBOX_KINDS][MAIL_OUTCOMES];  /* the same attempts by the mail's kind */
	bool ran;                    /* false: another sender holds the lease, or no server is set */
	bool unavailable;            /* the pass ended on a server that took no mail from us (or a
				      * store that could not mark one): wait before the next */
};

/* After `attempts` attempts refused with a 4xx: true and *next_at when to try again, or false
 * (the mail has failed). */
bool mail_retry(int attempts, int64_t now, int64_t *next_at);

/* After `outages` passes in a row that ended unavailable, how long the sender waits before its
 * next pass (the retry schedule's steps, then its last): a server down, or refusing our login
 * or our sender, is not tried every second, and spends no mail's attempts. */
int64_t mail_outage_wait_ms(int outages);

/* The Message-ID of a mail: "<id@host of public_url>" into out. */
#define MESSAGE_ID_LEN 300
void mail_message_id(const char *mail_id, const char *public_url, char out[MESSAGE_ID_LEN]);

struct config;
/* The settings of cfg (its strings borrowed). */
void mailer_settings(struct mail_settings *ms, const struct config *cfg);

/* One pass; stop (may be NULL) ends it early between mails. */
int mailer_run(struct ledger *lg, const struct mail_settings *ms, const char *holder, bool (*stop)(void),
	       struct mail_stats *st, struct err *e);

#endif
