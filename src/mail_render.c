/* mail_render.c - templates filled with a mail's values. */
#include "mail_render.h"

#include <ctype.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "civil.h"
#include "jsonx.h"
#include "tz.h"
#include "util.h"

/* The templates, built in from src/mail (MAIL_DIR is that directory's path, from the Makefile),
 * each NUL-terminated. */
#define EMBED(sym, file)                                                                          \
	__asm__(".section .rodata\n.balign 8\n.globl " #sym "\n" #sym ":\n.incbin \"" MAIL_DIR "/" file \
		"\"\n.byte 0\n.previous\n");                                                      \
	extern const char sym[]
EMBED(numatix_mail_receipt_txt, "receipt.txt");
EMBED(numatix_mail_receipt_html, "receipt.html");
EMBED(numatix_mail_payment_failed_txt, "payment_failed.txt");
EMBED(numatix_mail_payment_failed_html, "payment_failed.html");
EMBED(numatix_mail_ended_txt, "ended.txt");
EMBED(numatix_mail_ended_html, "ended.html");
EMBED(numatix_mail_offer_txt, "offer.txt");
EMBED(numatix_mail_offer_html, "offer.html");
EMBED(numatix_mail_login_txt, "login.txt");
EMBED(numatix_mail_login_html, "login.html");
EMBED(numatix_mail_reminder_txt, "reminder.txt");
EMBED(numatix_mail_reminder_html, "reminder.html");

static const struct template {
	const char *kind, *text, *html;
} templates[] = {
	{"receipt", numatix_mail_receipt_txt, numatix_mail_receipt_html},
	{"payment_failed", numatix_mail_payment_failed_txt, numatix_mail_payment_failed_html},
	{"ended", numatix_mail_ended_txt, numatix_mail_ended_html},
	{"offer", numatix_mail_offer_txt, numatix_mail_offer_html},
	{"login", numatix_mail_login_txt, numatix_mail_login_html},
	{"reminder", numatix_mail_reminder_txt, numatix_mail_reminder_html},
};

void mail_message_clear(struct mail_message *m)
{
	free(m->subject);
	free(m->text);
	free(m->html);
	memset(m, 0, sizeof(*m));
}

/* --- values ---------------------------------------------------------------------------------- */

/* A value as a template may show it: each control character (a line break) a space. */
static void put(struct json_object *vars, const char *key, const char *v)
{
	char *s = xstrdup(v ? v : "");

	for (char *p = s; *p; p++)
		if ((unsigned char)*p < 0x20 || *p == 0x7f)
			*p = ' ';
	json_object_object_add(vars, key, json_object_new_string(s));
	free(s);
}

/* An instant as the plan's people read it: "2026-12-02 14:00 Europe/Berlin". */
static void put_time(struct json_object *vars, const char *key, int64_t ms, const char *zone)
{
	const char *name = zone && *zone ? zone : "UTC";
	const struct tz *z = tz_get(name);
	int64_t s = civil_floor_div(ms, 1000), local = s + (z ? tz_offset_at(z, s) : 0), y;
	int64_t days = civil_floor_div(local, 86400), secs = local - days * 86400;
	int m, d;
	char buf[96];

	civil_from_days(days, &y, &m, &d);
	snprintf(buf, sizeof(buf), "%04" PRId64 "-%02d-%02d %02d:%02d %s", y, m, d, (int)(secs / 3600),
		 (int)(secs / 60 % 60), z ? name : "UTC");
	put(vars, key, buf);
}

static void put_amount(struct json_object *vars, int64_t cents, const char *currency)
{
	char buf[64], cur[4] = "";

	for (int i = 0; i < 3 && currency[i]; i++)
		cur[i] = (char)toupper((unsigned char)currency[i]);
	int64_t a = cents < 0 ? -cents : cents;
	snprintf(buf, sizeof(buf), "%s%" PRId64 ".%02" PRId64 " %s", cents < 0 ? "-" : "", a / 100, a % 100, cur);
	put(vars, "amount", buf);
}

struct json_object *mail_values(const struct mail *m, const struct customer *c, const char *plan_name,
				const char *public_url, const char *currency, const char *login_token)
{
	struct json_object *vars = json_object_new_object(), *data = NULL;
	char reason[8];
	const char *zone, *sub, *entry;
	char *link;

	if (jsonx_parse(m->data, strlen(m->data), &data, reason, sizeof(reason)) || !json_object_is_type(data, json_type_object)) {
		json_object_put(data);
		data = json_object_new_object();
	}
	zone = jsonx_str(data, "zone");
	sub = jsonx_str(data, "subscriptionId");
	entry = jsonx_str(data, "entryId");
	put(vars, "name", c->name && *c->name ? c->name : c->email);
	put(vars, "email", c->email);
	put(vars, "planName", plan_name && *plan_name ? plan_name : jsonx_str(data, "planName"));
	char q[24];
	snprintf(q, sizeof(q), "%" PRId64, jsonx_int(data, "quantity"));
	put(vars, "quantity", q);
	put(vars, "paymentId", jsonx_str(data, "paymentId"));
	put_amount(vars, jsonx_int(data, "amountCents"), currency);
	put_time(vars, "paidAt", jsonx_int(data, "paidAt"), zone);
	put_time(vars, "periodStart", jsonx_int(data, "periodStart"), zone);
	put_time(vars, "periodEnd", jsonx_int(data, "periodEnd"), zone);
	put_time(vars, "nextAttemptAt", jsonx_int(data, "nextAttemptAt"), zone);
	put_time(vars, "endedAt", jsonx_int(data, "endedAt"), zone);
	put_time(vars, "expiresAt", jsonx_int(data, "expiresAt"), NULL);
	const char *what = jsonx_str(data, "what");
	put(vars, "what", what && !strcmp(what, "renewal") ? "a renewal"
			  : what && !strcmp(what, "change")  ? "a change of plan"
							     : "a purchase");
	{
		char *r = xasprintf(jsonx_int(data, "renews") ? "It renews on %s." : "It ends on %s.",
				    json_object_get_string(json_object_object_get(vars, "periodEnd")));
		put(vars, "renewal", r);
		free(r);
		const char *end = json_object_get_string(json_object_object_get(vars, "periodEnd"));
		const char *amount = json_object_get_string(json_object_object_get(vars, "amount"));
		r = jsonx_int(data, "renews")
			    ? xasprintf("It renews on %s: we charge %s to your saved card then.", end, amount)
			    : xasprintf("It ends on %s: nothing more is charged, and its seats go back on sale.", end);
		put(vars, "upcoming", r);
		free(r);
	}
	const char *code = jsonx_str(data, "declineCode");
	put(vars, "declineCode", code && *code ? code : "declined");
	const char *status = jsonx_str(data, "status"), *why = jsonx_str(data, "reason");
	put(vars, "how", status && !strcmp(status, "ended")              ? "ended"
			 : why && !strcmp(why, "payment_failed")          ? "was cancelled: its renewal could not be paid"
									  : "was cancelled");
	if (login_token)
		link = xasprintf("%s/account.html#login=%s", public_url, login_token);
	else if (entry && *entry)
		link = xasprintf("%s/account.html#entry=%s", public_url, entry);
	else if (sub && *sub)
		link = xasprintf("%s/account.html#subscription=%s", public_url, sub);
	else
		link = xasprintf("%s/account.html", public_url);
	put(vars, "link", link);
	free(link);
	json_object_put(data);
	return vars;
}

/* --- templates ------------------------------------------------------------------------------- */

struct out {
	char *buf;
	size_t len, cap;
};

static void out_add(struct out *o, const char *s, size_t n)
{
	if (o->len + n + 1 > o->cap) {
		o->cap = (o->len + n + 1) * 2;
		o->buf = xrealloc(o->buf, o->cap);
	}
	memcpy(o->buf + o->len, s, n);
	o->len += n;
	o->buf[o->len] = '\0';
}

/* v escaped for HTML text and attributes, or as it is. */
static void out_value(struct out *o, const char *v, bool html)
{
	for (; *v; v++) {
		const char *esc = NULL;
		if (html)
			esc = *v == '&' ? "&amp;" : *v == '<' ? "&lt;" : *v == '>' ? "&gt;" : *v == '"' ? "&quot;"
			      : *v == '\'' ? "&#39;" : NULL;
		if (esc)
			out_add(o, esc, strlen(esc));
		else
			out_add(o, v, 1);
	}
}

/* The template t from its start to end (NULL: its end) with each {{name}} replaced by its value
 * and each line break a CRLF. */
static int fill(const char *t, const char *end, struct json_object *vars, bool html, char **res, struct err *e)
{
	struct out o = {0};

	out_add(&o, "", 0);
	while (end ? t < end : *t) {
		const char *open = strstr(t, "{{"), *close;
		if (!open || (end && open >= end))
			open = end ? end : t + strlen(t);
		for (const char *p = t; p < open; p++)
			if (*p == '\n')
				out_add(&o, "\r\n", 2);
			else if (*p != '\r')
				out_add(&o, p, 1);
		if (!*open || (end && open >= end))
			break;
		if (!(close = strstr(open, "}}"))) {
			free(o.buf);
			err_set(e, ERR_INTERNAL, NULL, "a mail template has {{ without }}");
			return -1;
		}
		char name[48];
		struct json_object *v;
		snprintf(name, sizeof(name), "%.*s", (int)(close - open - 2), open + 2);
		if (!json_object_object_get_ex(vars, name, &v)) {
			free(o.buf);
			err_set(e, ERR_INTERNAL, NULL, "a mail template names %s, which it has no value for", name);
			return -1;
		}
		out_value(&o, json_object_get_string(v), html);
		t = close + 2;
	}
	*res = o.buf;
	return 0;
}

int mail_render(const char *kind, struct json_object *vars, struct mail_message *out, struct err *e)
{
	const struct template *t = NULL;
	const char *nl;

	memset(out, 0, sizeof(*out));
	for (size_t i = 0; i < sizeof(templates) / sizeof(templates[0]); i++)
		if (!strcmp(templates[i].kind, kind))
			t = &templates[i];
	if (!t)
		return err_set(e, ERR_INTERNAL, NULL, "no mail template for %s", kind), -1;
	nl = strchr(t->text, '\n');
	if (!nl)
		return err_set(e, ERR_INTERNAL, NULL, "the mail template of %s has no subject line", kind), -1;
	if (fill(t->text, nl, vars, false, &out->subject, e) ||
	    fill(nl + 1 + (nl[1] == '\n'), NULL, vars, false, &out->text, e) ||
	    fill(t->html, NULL, vars, true, &out->html, e)) {
		mail_message_clear(out);
		return -1;
	}
	return 0;
}
