/* store.c - the release helpers of the store's output structs, and what the backends share.
 * Choosing a backend is store_open.c's: the backends use these helpers, so the file that
 * calls the backends is kept apart from them. */
#include "store.h"

#include <stdio.h>
#include <string.h>

#include "store_impl.h"

void claim_clear(struct claim *c)
{
	key_record_clear(&c->key);
	memset(c, 0, sizeof(*c));
}

void hold_out_clear(struct hold_out *h)
{
	claim_clear(&h->claim);
	subscription_clear(&h->sub);
	memset(h, 0, sizeof(*h));
}

void transition_out_clear(struct transition_out *t)
{
	subscription_clear(&t->sub);
	memset(t, 0, sizeof(*t));
}

char *store_url_redact(const char *url, char *out, size_t len)
{
	/* scheme://user:password@host...: the password runs from the ':' after the user to the
	 * last '@' before the path. */
	const char *auth = strstr(url, "://"), *at, *colon, *end, *pw = strstr(url, "password=");

	snprintf(out, len, "%s", url);
	if (pw) {
		/* key=value: password=secret up to the next space */
		const char *rest = pw + 9 + strcspn(pw + 9, " ");
		snprintf(out, len, "%.*spassword=***%s", (int)(pw - url), url, rest);
		return out;
	}
	if (!auth)
		return out;
	auth += 3;
	end = auth + strcspn(auth, "/?");
	for (at = end; at > auth && at[-1] != '@'; at--)
		;
	if (at == auth)
		return out;
	colon = memchr(auth, ':', (size_t)(at - 1 - auth));
	if (colon)
		snprintf(out, len, "%.*s***%s", (int)(colon + 1 - url), url, at - 1);
	return out;
}

struct seat_counts store_counts_before(struct seat_counts after, int64_t dleft, int64_t dheld)
{
	struct seat_counts b = {after.total, after.left - dleft, after.held - dheld};
	return b;
}

void store_hold_fill(struct subscription *sub, const struct hold_req *r)
{
	snprintf(sub->secret_hash, sizeof(sub->secret_hash), "%s", r->secret_hash ? r->secret_hash : "");
	snprintf(sub->attempt_key, sizeof(sub->attempt_key), "%s", r->attempt ? r->claim.key : "");
	sub->attempt_until = r->attempt ? r->claim.lease_until : 0;
	snprintf(sub->previous_id, sizeof(sub->previous_id), "%s", r->previous_id ? r->previous_id : "");
}

bool store_attempt_needs_lapse(const char *expect, const char *key)
{
	return *expect && strcmp(expect, key);
}

const struct seat_counts *store_event_before(const struct event_spec *ev, const struct seat_counts *before)
{
	return ev->counts == EV_BEFORE_AFTER ? before : NULL;
}

const struct seat_counts *store_event_after(const struct event_spec *ev, const struct seat_counts *after)
{
	return ev->counts != EV_NO_COUNTS ? after : NULL;
}

void store_offer_events(const struct waitlist_entry *w, struct event_spec ev[OFFER_EVENTS], struct outbox_mail *m,
			const char *trace_id)
{
	outbox_offer(m, w, trace_id);
	ev[0] = (struct event_spec){"waitlist.offered", "waitlist_entry", w->id, EV_BEFORE_AFTER, NULL, &m->spec};
	ev[1] = (struct event_spec){"seat.held", "session", w->session_id, EV_BEFORE_AFTER, NULL, NULL};
	ev[2] = (struct event_spec){"checkout.created", "session", w->session_id, EV_BEFORE_AFTER, NULL, NULL};
}
