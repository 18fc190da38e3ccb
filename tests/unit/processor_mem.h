/* processor_mem.h - an in-memory payment processor for the unit tests: the whole seam of
 * processor.h over a table of payments, with a crash injected at the next call of one
 * operation and counts of what it did. Single-threaded. */
#ifndef NUMATIX_TEST_PROCESSOR_MEM_H
#define NUMATIX_TEST_PROCESSOR_MEM_H

#include "processor.h"

struct processor *procmem_new(void);
void procmem_free(struct processor *p);
/* The next call of op ("authorize", "capture", "cancel", "refund") answers PAY_UNKNOWN, having
 * done nothing (before), or having done its work (after: the answer was lost). */
void procmem_fail_next(struct processor *p, const char *op, bool after);
/* Payments that were authorized (whatever became of them), captured, voided; money refunded. */
int procmem_authorized(struct processor *p);
int procmem_captured(struct processor *p);
int procmem_voided(struct processor *p);
int64_t procmem_refunded_cents(struct processor *p);
/* The state of the key's payment (PAYS_NONE when there is none). */
enum pay_state procmem_state(struct processor *p, const char *key);

#endif
