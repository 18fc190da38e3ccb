/* store_mem.h - an in-memory test double of the store, for the service tests. Test-only. */
#ifndef NUMATIX_STORE_MEM_H
#define NUMATIX_STORE_MEM_H

#include "store.h"

/* New, close with store_close. */
struct store *mem_store_new(void);
void mem_reset_all(struct store *s);
/* The next call of op ("hold", "transition", "payment_mark") fails as if the process died
 * there: nothing of it happens, the caller sees ERR_UNAVAILABLE. */
void mem_fail_next(struct store *s, const char *op);
/* Facts set by hand: a plan's counts (to break an invariant on purpose), a hold's deadline,
 * a key's lease. */
void mem_plan_counts(struct store *s, const char *plan_id, int64_t left, int64_t held);
void mem_sub_deadline(struct store *s, const char *sub_id, int64_t deadline);
void mem_key_lease(struct store *s, const char *key, int64_t until);

#endif
