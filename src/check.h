/* check.h - the invariants of DESIGN.md, verified on a live store from one read snapshot of
 * it (and the event feed read after it, for its gaps); the same rules for every store. */
#ifndef NUMATIX_CHECK_H
#define NUMATIX_CHECK_H

#include "ledger.h"

/* Reports one violated invariant. */
typedef void (*check_report_fn)(void *arg, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* *violations counts what report was told. -1 with e when the store could not be read. */
int check_run(struct ledger *lg, check_report_fn report, void *arg, int *violations, struct err *e);

#endif
