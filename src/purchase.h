/* purchase.h - the purchase state machine of DESIGN.md: claim the key, hold a seat, charge
 * outside any transaction, then confirm or give the seat back. Each step is one atomic unit
 * in the store; the key records how far a request got, so a retry resumes from there. */
#ifndef NUMATIX_PURCHASE_H
#define NUMATIX_PURCHASE_H

#include "http.h"

struct purchase_req {
	const char *plan_id;
	const char *payment_method;
	const char *customer_id;     /* or */
	const char *email, *name;    /* a customer found by email or created */
};

/* Runs the purchase for rq (its body already validated into p) and fills rs. */
void purchase_run(struct request *rq, struct response *rs, const struct purchase_req *p);

#endif
