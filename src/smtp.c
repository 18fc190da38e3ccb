/* smtp.c - SMTP over libcurl, the message built with libcurl's MIME API. */
#include "smtp.h"

#include <ctype.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <curl/curl.h>
#include <openssl/evp.h>

#include "util.h"
#include "valid.h"

static bool plain_ascii(const char *s)
{
	for (; *s; s++)
		if ((unsigned char)*s < 0x20 || (unsigned char)*s > 0x7e)
			return false;
	return true;
}

char *smtp_header_word(const char *text)
{
	size_t n = strlen(text), at = 0, len = 0;
	char *out;

	if (plain_ascii(text))
		return xstrdup(text);
	out = xmalloc(n * 2 + (n / 45 + 1) * 16 + 1);
	while (at < n) {
		/* at most 45 bytes a word (60 of base64: within RFC 2047's 75), never half a character */
		size_t take = n - at > 45 ? 45 : n - at;
		while (at + take < n && take > 0 && ((unsigned char)text[at + take] & 0xc0) == 0x80)
			take--;
		if (!take) /* not UTF-8 (the API lets none in): cut where it falls, never stuck */
			take = n - at > 45 ? 45 : n - at;
		if (len)
			out[len++] = ' ';
		memcpy(out + len, "=?UTF-8?B?", 10);
		len += 10;
		len += (size_t)EVP_EncodeBlock((unsigned char *)out + len, (const unsigned char *)text + at, (int)take);
		memcpy(out + len, "?=", 2);
		len += 2;
		at += take;
	}
	out[len] = '\0';
	return out;
}

/* True when a plain ASCII name can stand bare in a header: letters, digits, spaces and the
 * atext that neither starts an encoded word (=, ?) nor means something in an address. */
static bool bare_name(const char *s)
{
	for (; *s; s++)
		if (!isalnum((unsigned char)*s) && !strchr(" !#$%&'*+-/^_`{|}~", *s))
			return false;
	return true;
}

/* A display name and address as a header's value: a name with any character beyond ASCII is
 * encoded words; a plain one is bare, or else a quoted string, where nothing it holds (an
 * encoded word's shape, an address, a comma) is read as header syntax. */
static char *mailbox(const char *name, const char *addr)
{
	char *res;

	if (!name || !*name)
		return xasprintf("<%s>", addr);
	if (!plain_ascii(name)) {
		char *word = smtp_header_word(name);
		res = xasprintf("%s <%s>", word, addr);
		free(word);
	} else if (bare_name(name)) {
		res = xasprintf("%s <%s>", name, addr);
	} else {
		size_t n = strlen(name), j = 0;
		char *q = xmalloc(2 * n + 3);
		q[j++] = '"';
		for (size_t i = 0; i < n; i++) {
			if (name[i] == '"' || name[i] == '\\')
				q[j++] = '\\';
			q[j++] = name[i];
		}
		q[j++] = '"';
		q[j] = '\0';
		res = xasprintf("%s <%s>", q, addr);
		free(q);
	}
	return res;
}

/* What an attempt came to. libcurl tells the step a refusal came at only by its message:
 * "RCPT failed: N" and "DATA failed: N" answer the recipient or the message, and so does a
 * refusal after the message's data (CURLE_WEIRD_SERVER_REPLY with no message of its own); any
 * other (no connection, TLS, AUTH, the greeting, MAIL FROM, a timeout) says nothing about
 * this mail, only that the server does not take mail from us now. */
static enum smtp_outcome judged(CURLcode rc, long reply, const char *errbuf)
{
	bool of_the_mail = !strncmp(errbuf, "RCPT failed", 11) || !strncmp(errbuf, "DATA failed", 11) ||
			   (rc == CURLE_WEIRD_SERVER_REPLY && !*errbuf);

	if (rc == CURLE_OK)
		return SMTP_SENT;
	if (!of_the_mail || reply < 400 || reply >= 600)
		return SMTP_UNAVAILABLE;
	return reply >= 500 ? SMTP_REFUSED : SMTP_DEFERRED;
}

/* A trace id fit for a header as it is: 1 to 64 letters, digits, '-', '_', '.'. */
static bool trace_token(const char *s)
{
	size_t n = strlen(s);

	return n > 0 && n <= 64 && strspn(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.") == n;
}

static struct curl_slist *header(struct curl_slist *h, const char *name, const char *value)
{
	char *line = xasprintf("%s: %s", name, value);

	h = curl_slist_append(h, line);
	free(line);
	return h;
}

enum smtp_outcome smtp_send(const struct smtp_settings *s, const struct smtp_envelope *env,
			    const struct mail_message *msg, int *code, char *why, size_t whylen)
{
	char from_name[256], from_addr[256], to_name[256], to_addr[256], date[64], envelope_from[260];
	char errbuf[CURL_ERROR_SIZE] = "", rcpt[260];
	struct curl_slist *headers = NULL, *rcpts = NULL, *alt_type = NULL;
	curl_mime *mime = NULL, *alt = NULL;
	curl_mimepart *part;
	enum smtp_outcome out;
	long reply = 0;
	time_t now = time(NULL);
	struct tm tm;
	CURL *c;
	char *v;

	*code = 0;
	snprintf(why, whylen, "%s", "");
	if (!mailbox_split(s->from, from_name, sizeof(from_name), from_addr, sizeof(from_addr))) {
		snprintf(why, whylen, "the sender's address cannot be used");
		return SMTP_UNAVAILABLE;
	}
	if (!mailbox_split(env->to, to_name, sizeof(to_name), to_addr, sizeof(to_addr))) {
		snprintf(why, whylen, "the recipient's address cannot be mailed");
		return SMTP_REFUSED;
	}
	if (!(c = curl_easy_init())) {
		snprintf(why, whylen, "out of memory");
		return SMTP_UNAVAILABLE;
	}
	snprintf(envelope_from, sizeof(envelope_from), "<%s>", from_addr);
	snprintf(rcpt, sizeof(rcpt), "<%s>", to_addr);
	rcpts = curl_slist_append(rcpts, rcpt);

	gmtime_r(&now, &tm);
	strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S +0000", &tm);
	headers = header(headers, "Date", date);
	v = mailbox(from_name, from_addr);
	headers = header(headers, "From", v);
	free(v);
	v = mailbox(env->to_name, to_addr);
	headers = header(headers, "To", v);
	free(v);
	v = smtp_header_word(msg->subject);
	headers = header(headers, "Subject", v);
	free(v);
	headers = header(headers, "Message-ID", env->message_id);
	headers = header(headers, "Auto-Submitted", "auto-generated");
	if (env->trace_id && trace_token(env->trace_id))
		headers = header(headers, "X-Trace-Id", env->trace_id);

	/* multipart/alternative: the plain text first, the HTML last (the one readers prefer) */
	mime = curl_mime_init(c);
	alt = curl_mime_init(c);
	part = curl_mime_addpart(alt);
	curl_mime_data(part, msg->text, CURL_ZERO_TERMINATED);
	curl_mime_type(part, "text/plain; charset=utf-8");
	curl_mime_encoder(part, "quoted-printable");
	part = curl_mime_addpart(alt);
	curl_mime_data(part, msg->html, CURL_ZERO_TERMINATED);
	curl_mime_type(part, "text/html; charset=utf-8");
	curl_mime_encoder(part, "quoted-printable");
	part = curl_mime_addpart(mime);
	curl_mime_subparts(part, alt);
	curl_mime_type(part, "multipart/alternative");
	alt_type = curl_slist_append(NULL, "Content-Disposition: inline");
	curl_mime_headers(part, alt_type, 1);

	curl_easy_setopt(c, CURLOPT_URL, s->url);
	curl_easy_setopt(c, CURLOPT_MAIL_FROM, envelope_from);
	curl_easy_setopt(c, CURLOPT_MAIL_RCPT, rcpts);
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, headers);
	curl_easy_setopt(c, CURLOPT_MIMEPOST, mime);
	curl_easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf);
	curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, 10L);
	curl_easy_setopt(c, CURLOPT_TIMEOUT, (long)SMTP_TIMEOUT_S);
	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "smtp,smtps");
	/* a password never goes over a connection in the clear */
	curl_easy_setopt(c, CURLOPT_USE_SSL, s->user ? (long)CURLUSESSL_ALL : (long)CURLUSESSL_TRY);
	if (s->user) {
		curl_easy_setopt(c, CURLOPT_USERNAME, s->user);
		curl_easy_setopt(c, CURLOPT_PASSWORD, s->password ? s->password : "");
	}
	CURLcode rc = curl_easy_perform(c);
	curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &reply);
	*code = (int)reply;
	out = judged(rc, reply, errbuf);
	if (out != SMTP_SENT) {
		if (reply)
			snprintf(why, whylen, "the server answered %ld (%s)", reply, *errbuf ? errbuf : curl_easy_strerror(rc));
		else
			snprintf(why, whylen, "%s", *errbuf ? errbuf : curl_easy_strerror(rc));
	}
	curl_easy_cleanup(c);
	curl_mime_free(mime);
	curl_slist_free_all(headers);
	curl_slist_free_all(rcpts);
	return out;
}
