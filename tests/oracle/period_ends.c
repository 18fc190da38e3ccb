/* period_ends.c - period.c's arithmetic on lines from stdin, for the differential test against
 * Python's zoneinfo and dateutil (tests/api/test_periods.py). A test tool: the shipped binary
 * has no such command.
 *
 *   in:  <anchor ms> <day|week|month|year> <count> <zone> <k>
 *   out: <end ms>, or "error" */
#include <stdio.h>
#include <stdlib.h>

#include "period.h"

int main(void)
{
	char line[256], unit[16], zone[PERIOD_ZONE_MAX + 1];
	long long anchor, k;
	int count;

	while (fgets(line, sizeof(line), stdin)) {
		enum period_unit u;
		int64_t end;
		if (sscanf(line, "%lld %15s %d %64s %lld", &anchor, unit, &count, zone, &k) != 5 ||
		    period_unit_parse(unit, &u) || period_end(anchor, u, count, zone, k, &end))
			puts("error");
		else
			printf("%lld\n", (long long)end);
	}
	return 0;
}
