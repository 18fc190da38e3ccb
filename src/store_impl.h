/* store_impl.h - for the backends only (store_<kind>.c): their constructors, and what every
 * backend needs alike. Nothing above the store includes this. */
#ifndef NUMATIX_STORE_IMPL_H
#define NUMATIX_STORE_IMPL_H

#include <stddef.h>

#include "outbox.h"
#include "store.h"

struct store *store_sqlite_open(const char *url, struct err *e);
struct store *store_mongo_open(const char *url, struct err *e);
struct store *store_pg_open(const char *url, struct err *e);

/* The seat counts an event records, of the unit's counts before and after its move: each NULL
 * when the event records none of that side. */
const struct seat_counts *store_event_before(const struct event_spec *ev, const struct seat_counts *before);
const struct seat_counts *store_event_after(const struct event_spec *ev, const struct seat_counts *after);

/* The seat counts of an event before a unit's move, from the counts after it. */
struct seat_counts store_counts_before(struct seat_counts after, int64_t dleft, int64_t dheld);

/* The fields of a held subscription that come from the request alone: its client secret's
 * hash, and its payment attempt (the key, while its lease runs) when the hold pays at once. */
void store_hold_fill(struct subscription *sub, const struct hold_req *r);

/* The events of one offer: waitlist.offered on the entry (sending its mail, m: clear it after
 * the events are written), seat.held and checkout.created on its session, each with the plan's
 * counts before and after the offer. w's offer_expires_at is the offer's deadline. */
#define OFFER_EVENTS 3
void store_offer_events(const struct waitlist_entry *w, struct event_spec ev[OFFER_EVENTS], struct outbox_mail *m,
			const char *trace_id);

/* Whether attempt_take must see expect's lease ended: expect is another request's attempt. */
bool store_attempt_needs_lapse(const char *expect, const char *key);

#endif
