"""test_periods.py - the period arithmetic (src/period.c, ICU's calendar) against an independent
oracle, on thousands of random anchors, terms and time zones: Python's zoneinfo (the system's
tz database) with dateutil.relativedelta. They must agree on every end.

The oracle's rule is API.md's: period k ends at the anchor's local wall time plus (k+1) x count
units, a day of month past the month's end clamped to it (relativedelta does), read back in the
zone with fold 0 — a local time skipped in spring takes the offset before the change, one that
happens twice in autumn is its first. The C side is driven through tests/oracle/period_ends.c
(built by `make unit`), a line per case."""

import calendar
import datetime
import os
import random
import subprocess
import unittest
import zoneinfo

from dateutil.relativedelta import relativedelta

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
TOOL = os.path.join(os.environ.get("NUMATIX_UNIT_DIR") or os.path.join(ROOT, "build", "tests"), "period_ends")
UNITS = {"day": "days", "week": "weeks", "month": "months", "year": "years"}
# zones with summer time both ways, half and quarter hours, a 30-minute change (Lord Howe), the
# southern hemisphere, zones without changes, and UTC
ZONES = ["UTC", "Europe/Berlin", "Europe/London", "Europe/Dublin", "Europe/Lisbon", "Europe/Moscow", "America/New_York",
         "America/Los_Angeles", "America/Chicago", "America/Sao_Paulo", "America/Santiago", "America/St_Johns",
         "America/Havana", "America/Asuncion", "Asia/Tokyo", "Asia/Kolkata", "Asia/Kathmandu", "Asia/Tehran",
         "Asia/Jerusalem", "Asia/Gaza", "Australia/Sydney", "Australia/Adelaide", "Australia/Lord_Howe",
         "Pacific/Auckland", "Pacific/Chatham", "Pacific/Apia", "Africa/Cairo", "Africa/Johannesburg",
         "America/Argentina/Buenos_Aires", "Antarctica/Troll", "Etc/GMT+5", "Asia/Kabul"]


def oracle(anchor_ms, unit, count, zone, k):
    tz = zoneinfo.ZoneInfo(zone)
    local = datetime.datetime.fromtimestamp(anchor_ms / 1000, tz).replace(tzinfo=None)
    end = local + relativedelta(**{UNITS[unit]: (k + 1) * count})
    return int(round(end.replace(tzinfo=tz, fold=0).timestamp() * 1000))


class Differential(unittest.TestCase):
    def run_tool(self, cases):
        lines = "".join("%d %s %d %s %d\n" % c for c in cases)
        r = subprocess.run([TOOL], input=lines, capture_output=True, text=True, timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr)
        return r.stdout.split()

    def test_random_anchors_terms_and_zones_agree(self):
        rng = random.Random(os.environ.get("NUMATIX_PERIOD_SEED", "periods"))
        start = datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc).timestamp()
        end = datetime.datetime(2036, 1, 1, tzinfo=datetime.timezone.utc).timestamp()
        # the listed zones, and a sample of every zone the tz database has
        zones = ZONES + rng.sample(sorted(zoneinfo.available_timezones() - {"Factory", "localtime"}), 150)
        cases = []
        for _ in range(20000):
            unit = rng.choice(list(UNITS))
            count = rng.choice([1, 1, 1, 2, 3, 6, 12, rng.randint(1, 365)]) if unit != "year" else rng.randint(1, 5)
            anchor = int(rng.uniform(start, end) * 1000)
            if rng.random() < 0.3:
                # a month's last days, where clamping happens
                d = datetime.datetime.fromtimestamp(anchor / 1000, datetime.timezone.utc)
                last = calendar.monthrange(d.year, d.month)[1]
                anchor = int(d.replace(day=rng.randint(last - 3, last)).timestamp() * 1000)
            cases.append((anchor, unit, count, rng.choice(zones), rng.randint(0, 40)))
        # and anchors at the local hours that a change of summer time skips or repeats
        for zone in ZONES:
            tz = zoneinfo.ZoneInfo(zone)
            for year in (2027, 2031):
                for month in range(1, 13):
                    for hour in (0, 1, 2, 3):
                        local = datetime.datetime(year, month, rng.randint(1, 28), hour, 30, tzinfo=tz)
                        cases.append((int(local.timestamp() * 1000), rng.choice(["day", "week"]), rng.randint(1, 40),
                                      zone, rng.randint(0, 12)))
        got = self.run_tool(cases)
        self.assertEqual(len(got), len(cases))
        wrong = [(c, g, oracle(*c)) for c, g in zip(cases, got) if g == "error" or int(g) != oracle(*c)]
        self.assertEqual(wrong[:10], [], "%d of %d cases disagree" % (len(wrong), len(cases)))

    def test_the_dates_of_the_contract(self):
        utc = lambda *a: int(datetime.datetime(*a, tzinfo=datetime.timezone.utc).timestamp() * 1000)
        cases = [(utc(2027, 1, 31, 10), "month", 1, "UTC", k) for k in range(4)]
        cases += [(utc(2028, 1, 31, 10), "month", 1, "UTC", 0)]
        cases += [(utc(2028, 2, 29), "year", 1, "UTC", k) for k in range(4)]
        cases += [(utc(2027, 3, 13, 9), "day", 30, "Europe/Berlin", 0)]
        got = [int(g) for g in self.run_tool(cases)]
        self.assertEqual(got, [utc(2027, 2, 28, 10), utc(2027, 3, 31, 10), utc(2027, 4, 30, 10), utc(2027, 5, 31, 10),
                               utc(2028, 2, 29, 10), utc(2029, 2, 28), utc(2030, 2, 28), utc(2031, 2, 28),
                               utc(2032, 2, 29), utc(2027, 4, 12, 8)])
        self.assertEqual(got, [oracle(*c) for c in cases])

    def test_unknown_zones_and_terms_are_refused(self):
        got = self.run_tool([(0, "day", 1, "Mars/Olympus", 0), (0, "day", 1, "../../etc/passwd", 0),
                             (0, "fortnight", 1, "UTC", 0), (0, "day", 0, "UTC", 0), (0, "day", 1, "UTC", -1)])
        self.assertEqual(got, ["error"] * 5)


if __name__ == "__main__":
    unittest.main()
