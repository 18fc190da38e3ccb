/* mailer.c - a pass over the outbox's due mails. */
#include "mailer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include "config.h"
#include "ids.h"
#include "jsonx.h"
#include "log.h"
#include "mail_render.h"
#include "util.h"

#define BATCH 50
/* the lease of a pass; renewed before each batch */
#define LEASE_MS 60000

void mailer_settings(struct mail_settings *ms, const struct config *cfg)
{
	ms->smtp = (struct smtp_settings){cfg->smtp_url, cfg->smtp_user, cfg->smtp_password, cfg->mail_from};
	ms->public_url = cfg->public_url;
	ms->currency = cfg->currency;
}

bool mail_retry(int attempts, int64_t now, int64_t *next_at)
{
	static const int64_t after_s[MAIL_RETRIES] = {10, 30, 60, 300, 900};

	if (attempts < 1 || attempts > MAIL_RETRIES)
		return false;
	*next_at = now + after_s[attempts - 1] * 1000;
	return true;
}

void mail_message_id(const char *mail_id, const char *public_url, char out[MESSAGE_ID_LEN])
{
	const char *host = strstr(public_url, "://");
	size_t n;

	host = host ? host + 3 : public_url;
	n = strcspn(host, ":/");
	snprintf(out, MESSAGE_ID_LEN, "<mail.%s@%.*s>", mail_id, (int)(n ? n : 9), n ? host : "localhost");
}

/* The plan's name as it is now, for a mail that names only its plan (an offer); "" if none. */
static char *plan_name_of(struct ledger *lg, const char *data)
{
	struct json_object *o = NULL;
	struct plan p = {0};
	struct err e = {0};
	char reason[8], *name = xstrdup("");
	bool found = false;

	if (jsonx_parse(data, strlen(data), &o, reason, sizeof(reason)) == 0 && jsonx_str(o, "planId") &&
	    lg->store->ops->plan_get(lg->store, jsonx_str(o, "planId"), &p, &found, &e) == 0 && found) {
		free(name);
		name = xstrdup(p.name ? p.name : "");
		plan_clear(&p);
	}
	json_object_put(o);
	return name;
}

/* What became of one attempt at m, written with mail.failed when it has failed. */
static int mark(struct ledger *lg, const struct actor *a, const struct mail *m, const struct mail *next, int code,
		struct err *e)
{
	struct json_object *o = json_object_new_object();
	bool moved;
	int rc;

	json_object_object_add(o, "mailId", json_object_new_string(m->id));
	json_object_object_add(o, "kind", json_object_new_string(m->kind));
	json_object_object_add(o, "attempts", json_object_new_int(next->attempts));
	json_object_object_add(o, "code", json_object_new_int(code));
	json_object_object_add(o, "error", json_object_new_string(next->last_error));
	const struct event_spec ev[] = {
		{"mail.failed", "mail", m->id, EV_NO_COUNTS, json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN), NULL},
	};
	rc = lg->store->ops->mail_mark(lg->store, next, m->attempts, ev, strcmp(next->status, "failed") ? 0 : 1, a,
				       &moved, e);
	json_object_put(o);
	return rc;
}

/* One mail rendered and sent. *reached: the server answered (false: stop this pass). */
static int send_one(struct ledger *lg, const struct mail_settings *ms, const struct actor *a, const struct mail *m,
		    struct mail_stats *st, bool *reached, struct err *e)
{
	struct customer c = {0};
	struct mail_message msg = {0};
	struct mail next = *m;
	struct err re = {0};
	char msgid[MESSAGE_ID_LEN], why[160] = "";
	enum smtp_outcome out;
	bool found = false;
	int code = 0, rc;

	*reached = true;
	if (lg->store->ops->customer_get(lg->store, m->customer_id, &c, &found, e))
		return -1;
	if (!found) {
		out = SMTP_REFUSED;
		snprintf(why, sizeof(why), "no customer %s", m->customer_id);
	} else {
		char *plan = plan_name_of(lg, m->data);
		struct json_object *vars = mail_values(m, &c, plan, ms->public_url, ms->currency);
		if (mail_render(m->kind, vars, &msg, &re)) {
			out = SMTP_REFUSED;
			snprintf(why, sizeof(why), "%.150s", re.msg);
		} else {
			struct smtp_envelope env = {c.email, c.name, msgid};
			mail_message_id(m->id, ms->public_url, msgid);
			out = smtp_send(&ms->smtp, &env, &msg, &code, why, sizeof(why));
		}
		json_object_put(vars);
		free(plan);
	}
	next.attempts = m->attempts + 1;
	snprintf(next.last_error, sizeof(next.last_error), "%s", out == SMTP_SENT ? "" : why);
	if (out == SMTP_SENT) {
		snprintf(next.status, sizeof(next.status), "sent");
		next.next_attempt_at = 0;
		st->sent++;
	} else if (out == SMTP_DEFERRED && mail_retry(next.attempts, now_ms(), &next.next_attempt_at)) {
		st->deferred++;
		*reached = code != 0;
	} else {
		snprintf(next.status, sizeof(next.status), "failed");
		next.next_attempt_at = 0;
		st->failed++;
		LOG_WARN(a->trace_id, "mail %s (%s) failed after %d attempt(s): %d %s", m->id, m->kind, next.attempts, code,
			 why);
	}
	rc = mark(lg, a, m, &next, code, e);
	mail_message_clear(&msg);
	customer_clear(&c);
	return rc;
}

int mailer_run(struct ledger *lg, const struct mail_settings *ms, const char *holder, bool (*stop)(void),
	       struct mail_stats *st, struct err *e)
{
	struct store *s = lg->store;
	char trace[UUID_LEN + 1];
	struct actor a = {trace, "system", "mailer", NULL};
	bool taken, reached = true;
	int rc = 0;

	memset(st, 0, sizeof(*st));
	if (!ms->smtp.url)
		return 0;
	uuid_new(trace);
	while (rc == 0 && reached && !(stop && stop())) {
		struct mail *due = NULL;
		size_t n = 0;
		int64_t now = now_ms();
		if (s->ops->lease_take(s, MAILER_LEASE, holder, now, now + LEASE_MS, &taken, e))
			return -1;
		if (!taken)
			return 0;
		st->ran = true;
		if (s->ops->mail_due(s, now, BATCH, &due, &n, e)) {
			rc = -1;
			break;
		}
		for (size_t i = 0; i < n && reached && !(stop && stop()); i++) {
			struct err me = {0};
			/* a mail not marked goes again at the next pass: this one ends here */
			if (send_one(lg, ms, &a, &due[i], st, &reached, &me)) {
				LOG_WARN(trace, "mailer: %s: %s", due[i].id, me.msg);
				reached = false;
			}
		}
		for (size_t i = 0; i < n; i++)
			mail_clear(&due[i]);
		free(due);
		if (n < BATCH)
			break;
	}
	if (st->sent || st->deferred || st->failed)
		LOG_INFO(trace, "mailer: %d sent, %d deferred, %d failed", st->sent, st->deferred, st->failed);
	if (st->ran) {
		struct err ignored = {0};
		s->ops->lease_take(s, MAILER_LEASE, holder, now_ms(), 0, &taken, &ignored);
	}
	return rc;
}
