/* waitlist.h - waiting lists: joining a sold-out plan's line, reading one's place, leaving,
 * and the operator's view of the line. The offers themselves are made by the store, in the
 * same unit as whatever frees the seats (store.h, *offers*); an offer is a checkout session
 * (purchase.h), completed or expired like any other. */
#ifndef NUMATIX_WAITLIST_H
#define NUMATIX_WAITLIST_H

#include "ledger.h"

struct join_spec {
	const char *plan_id;
	int64_t quantity;
	const char *customer_id;          /* an existing customer, or */
	const char *email, *name;         /* found by email or created */
};

/* Joins: 0 with out (its position) and the entry's access token (shown once), or -1 with the
 * refusal: PLAN_NOT_FOUND, PLAN_INACTIVE, WAITLIST_DISABLED, SEATS_AVAILABLE
 * (details.available), ALREADY_WAITING, CUSTOMER_LIMIT_REACHED, CUSTOMER_NOT_FOUND, or a
 * VALIDATION_ERROR on quantity. */
int waitlist_join(struct ledger *lg, const struct actor *a, const struct join_spec *js, struct waitlist_entry *out,
		  char token[TOKEN_LEN + 1], struct err *e);
/* ENTRY_NOT_FOUND */
int waitlist_get(struct ledger *lg, const char *id, struct waitlist_entry *out, struct err *e);
/* waiting or offered -> left (an offer's session expires, its seats pass on at once); out:
 * the entry after; ENTRY_NOT_LIVE when it is neither. */
int waitlist_leave(struct ledger *lg, const struct actor *a, const char *id, struct waitlist_entry *out, struct err *e);
/* A plan's entries in line order, every status. *out: new, free(). */
int waitlist_list(struct ledger *lg, const char *plan_id, const struct page_req *pg, struct waitlist_entry **out,
		  size_t *n, char next[CURSOR_LEN], struct err *e);

#endif
