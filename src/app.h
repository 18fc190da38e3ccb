/* app.h - handling one request: route, authenticate, parse, keep idempotent, dispatch, log. */
#ifndef NUMATIX_APP_H
#define NUMATIX_APP_H

#include "http.h"

/* Fills rs for rq. rq->store, rq->cfg and the body must be set. Never fails: every problem
 * becomes a JSON error response. */
void app_handle(struct request *rq, struct response *rs);

/* Whether the bearer token is the access token of the subscription it names
 * (the subscription's id into sub_id). */
bool app_token_valid(struct request *rq, const char *token, char sub_id[ID_LEN + 1]);

#endif
