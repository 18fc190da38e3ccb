/* civil.h - the proleptic Gregorian calendar on day numbers (days since 1970-01-01), after
 * Howard Hinnant's "chrono-compatible low-level date algorithms". */
#ifndef NUMATIX_CIVIL_H
#define NUMATIX_CIVIL_H

#include <stdbool.h>
#include <stdint.h>

int64_t civil_days(int64_t y, int m, int d);            /* m 1...12, d 1...31 */
void civil_from_days(int64_t days, int64_t *y, int *m, int *d);
bool civil_leap(int64_t y);
int civil_month_days(int64_t y, int m);
int civil_weekday(int64_t days);                        /* 0 Sunday ... 6 Saturday */
int64_t civil_floor_div(int64_t a, int64_t b);          /* b > 0 */

#endif
