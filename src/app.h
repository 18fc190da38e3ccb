/* app.h - handling one request: route, authenticate, parse, keep idempotent, dispatch, log. */
#ifndef NUMATIX_APP_H
#define NUMATIX_APP_H

#include "http.h"

struct config;
/* A ledger over store s with the settings of cfg and the API's replies. */
void app_ledger_init(struct ledger *lg, struct store *s, const struct config *cfg);

/* Fills rs for rq. rq->lg, rq->cfg and the body must be set. Never fails: every problem
 * becomes a JSON error response. */
void app_handle(struct request *rq, struct response *rs);

#endif
