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
/* The lease of a pass, renewed before each mail: longer than one attempt can take, so no other
 * sender takes a mail over while it is being sent. */
#define LEASE_MS ((SMTP_TIMEOUT_S * 2 + 10) * 1000)

void mailer_settings(struct mail_settings *ms, const struct config *cfg)
{
	ms->smtp = (struct smtp_settings){cfg->smtp_url, cfg->smtp_user, cfg->smtp_password, cfg->mail_from};
	ms->public_url = cfg->public_url;
	ms->currency = cfg->currency;
}

static const int64_t after_s[MAIL_RETRIES] = {10, 30, 60, 300, 900};

bool mail_retry(int attempts, int64_t now, int64_t *next_at)
{
	if (attempts < 1 || attempts > MAIL_RETRIES)
		return false;
	*next_at = now + after_s[attempts - 1] * 1000;
	return true;
}

int64_t mail_outage_wait_ms(int outages)
{
	if (outages < 1)
		return 0;
	return after_s[outages > MAIL_RETRIES ? MAIL_RETRIES - 1 : outages - 1] * 1000;
}

void mail_message_id(const char *mail_id, const char *public_url, char out[MESSAGE_ID_LEN])
{
	const char *host = strstr(public_url, "://");
	size_t n;

	host = host ? host + 3 : public_url;
	/* an IPv6 host is a domain literal, brackets and all */
	n = *host == '[' && strchr(host, ']') ? (size_t)(strchr(host, ']') - host) + 1 : strcspn(host, ":/");
	snprintf(out, MESSAGE_ID_LEN, "<mail.%s@%.*s>", mail_id, (int)(n ? n : 9), n ? host : "localhost");
}

/* The plan's name as it is now, for a mail that names only its plan (an offer), and the trace
 * of the change that sent it, from the row's data; "" when none. */
static void row_facts(struct ledger *lg, const char *data, char **plan_name, char trace[65])
{
	struct json_object *o = NULL;
	struct plan p = {0};
	struct err e = {0};
	char reason[8];
	bool found = false;

	*plan_name = xstrdup("");
	*trace = '\0';
	if (jsonx_parse(data, strlen(data), &o, reason, sizeof(reason)))
		return;
	if (jsonx_str(o, "traceId"))
		snprintf(trace, 65, "%s", jsonx_str(o, "traceId"));
	if (jsonx_str(o, "planId") &&
	    lg->store->ops->plan_get(lg->store, jsonx_str(o, "planId"), &p, &found, &e) == 0 && found) {
		free(*plan_name);
		*plan_name = xstrdup(p.name ? p.name : "");
		plan_clear(&p);
	}
	json_object_put(o);
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

/* One mail rendered and sent, and what came of it marked. *reached: the server answered for
 * this mail (false: it took no mail from us, and the pass ends). */
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
		char *plan, trace[65], *token = m->secret ? ledger_unseal(lg, m->secret) : NULL;
		row_facts(lg, m->data, &plan, trace);
		struct json_object *vars = mail_values(m, &c, plan, ms->public_url, ms->currency, token);
		if (m->secret && !token) {
			out = SMTP_REFUSED;
			snprintf(why, sizeof(why), "its link was sealed under another NUMATIX_ADMIN_TOKEN");
		} else if (mail_render(m->kind, vars, &msg, &re)) {
			out = SMTP_REFUSED;
			snprintf(why, sizeof(why), "%.150s", re.msg);
		} else {
			struct smtp_envelope env = {c.email, c.name, msgid, trace};
			mail_message_id(m->id, ms->public_url, msgid);
			out = smtp_send(&ms->smtp, &env, &msg, &code, why, sizeof(why));
		}
		json_object_put(vars);
		free(plan);
		if (token) {
			explicit_bzero(token, strlen(token));
			free(token);
		}
	}
	/* an attempt the server did not answer for this mail is not one of its attempts: an
	 * outage or a refused login fails no mail, whatever it lasts */
	next.attempts = out == SMTP_UNAVAILABLE ? m->attempts : m->attempts + 1;
	snprintf(next.last_error, sizeof(next.last_error), "%s", out == SMTP_SENT ? "" : why);
	int kind = outbox_kind_index(m->kind);
	if (out == SMTP_SENT) {
		snprintf(next.status, sizeof(next.status), "sent");
		next.next_attempt_at = 0;
		st->sent++;
		if (kind >= 0)
			st->by_kind[kind][MAIL_SENT]++;
	} else if (out == SMTP_UNAVAILABLE) {
		st->unavailable = true;
		*reached = false;
		LOG_WARN(a->trace_id, "mailer: the mail server took no mail: %s", why);
	} else if (out == SMTP_DEFERRED && mail_retry(next.attempts, now_ms(), &next.next_attempt_at)) {
		st->deferred++;
		if (kind >= 0)
			st->by_kind[kind][MAIL_DEFERRED]++;
	} else {
		snprintf(next.status, sizeof(next.status), "failed");
		next.next_attempt_at = 0;
		st->failed++;
		if (kind >= 0)
			st->by_kind[kind][MAIL_FAILED]++;
		LOG_WARN(a->trace_id, "mail %s (%s) failed after %d attempt(s): %d %s", m->id, m->kind, next.attempts, code,
			 why);
	}
	rc = mark(lg, a, m, &next, code, e);
	if (rc)
		st->unavailable = true; /* the store: what was sent is sent again, not at once */
	mail_message_clear(&msg);
	customer_clear(&c);
	return rc;
}

/* The pass's lease taken or kept for another LEASE_MS. */
static int renew(struct store *s, const char *holder, bool *taken, struct err *e)
{
	int64_t now = now_ms();

	return s->ops->lease_take(s, MAILER_LEASE, holder, now, now + LEASE_MS, taken, e);
}

/* The lease given back at the end of a pass; rc passed through. */
static int release(struct store *s, const char *holder, int rc)
{
	struct err ignored = {0};
	bool taken;

	s->ops->lease_take(s, MAILER_LEASE, holder, now_ms(), 0, &taken, &ignored);
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
		if (renew(s, holder, &taken, e))
			return st->ran ? release(s, holder, -1) : -1;
		if (!taken)
			break;
		st->ran = true;
		if (s->ops->mail_due(s, now_ms(), BATCH, &due, &n, e)) {
			rc = -1;
			break;
		}
		for (size_t i = 0; i < n && reached && !(stop && stop()); i++) {
			struct err me = {0};
			if ((i > 0 && renew(s, holder, &taken, &me)) || !taken) {
				reached = false; /* the lease lost: the pass ends before this mail */
				if (me.kind != ERR_NONE)
					LOG_WARN(trace, "mailer: the lease: %s", me.msg);
			/* a mail not marked goes again at a later pass: this one ends here */
			} else if (send_one(lg, ms, &a, &due[i], st, &reached, &me)) {
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
	return st->ran ? release(s, holder, rc) : rc;
}
