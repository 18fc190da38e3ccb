# Numatix: one plain Makefile. `make` builds cgi-bin/numatix; `make run` starts the whole
# service; `make test` runs every suite; `make bench` measures. run, test and bench install
# what a fresh Debian 12 machine lacks first (scripts/deps.sh), then build in a sub-make so
# pkg-config sees the freshly installed libraries.

PKGS     := fcgi json-c sqlite3 uuid libcrypto libcurl libmongoc-1.0 libpq
BUILD    ?= build
BIN      ?= cgi-bin/numatix
SAN      ?=
CC       ?= cc
WARN     := -Wall -Wextra -Werror -Wstrict-prototypes -Wmissing-prototypes -Wshadow \
            -Wpointer-arith -Wcast-qual -Wsign-compare -Wformat=2
CFLAGS   ?= -O2 -g
CFLAGS   += -DMAIL_DIR='"$(CURDIR)/src/mail"'
CFLAGS   += -std=gnu11 -D_GNU_SOURCE -pthread $(WARN) -MMD -MP $(patsubst -I%,-isystem %,$(shell pkg-config --cflags $(PKGS) 2>/dev/null))
LDLIBS   += $(shell pkg-config --libs $(PKGS) 2>/dev/null) -pthread
ifneq ($(SAN),)
CFLAGS   += -fsanitize=$(SAN) -fno-omit-frame-pointer
LDFLAGS  += -fsanitize=$(SAN)
endif

SRC      := $(wildcard src/*.c)
OBJ      := $(SRC:src/%.c=$(BUILD)/%.o)
LIBOBJ   := $(filter-out $(BUILD)/main.o,$(OBJ))
UNIT_SRC := $(wildcard tests/unit/test_*.c)
UNIT_BIN := $(UNIT_SRC:tests/unit/%.c=$(BUILD)/tests/%)
# test doubles and helpers beside the tests (tests/unit/*.c that are not a test_*.c)
UNIT_LIB := $(filter-out $(UNIT_SRC),$(wildcard tests/unit/*.c))

ifeq ($(V),)
Q := @
quiet = @printf '  %-6s %s\n' $(1) $(2);
endif

.PHONY: all run test test-mongo unit bench asan fuzz deps clean install uninstall

# make install [PREFIX=/usr/local] [DESTDIR=...]: the binary, the pages, the nginx site, the
# systemd units, the sysusers and logrotate rules and the settings file (kept if present).
PREFIX     ?= /usr/local
BINDIR     ?= $(PREFIX)/bin
DATADIR    ?= $(PREFIX)/share/numatix
SYSCONFDIR ?= /etc
UNITDIR    ?= $(PREFIX)/lib/systemd/system
SYSUSERSDIR ?= $(PREFIX)/lib/sysusers.d
SUBST      := sed -e 's|@BINDIR@|$(BINDIR)|g' -e 's|@DATADIR@|$(DATADIR)|g' -e 's|@SYSCONFDIR@|$(SYSCONFDIR)|g'

all: $(BIN)

$(BIN): $(OBJ)
	$(call quiet,LD,$@)mkdir -p $(dir $@) && $(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/%.o: src/%.c
	$(call quiet,CC,$@)mkdir -p $(dir $@) && $(CC) $(CFLAGS) -c -o $@ $<

# the mail templates are built into the binary (.incbin of MAIL_DIR's files)
$(BUILD)/mail_render.o: $(wildcard src/mail/*)

$(BUILD)/tests/%: tests/unit/%.c $(UNIT_LIB) $(LIBOBJ)
	$(call quiet,CC,$@)mkdir -p $(dir $@) && $(CC) $(CFLAGS) -Isrc -Itests/unit -o $@ $< $(UNIT_LIB) $(LIBOBJ) $(LDFLAGS) $(LDLIBS) -lcmocka

# the period arithmetic on stdin, for the differential test against Python's oracle
$(BUILD)/tests/period_ends: tests/oracle/period_ends.c $(BUILD)/period.o $(BUILD)/tz.o $(BUILD)/civil.o $(BUILD)/util.o
	$(call quiet,CC,$@)mkdir -p $(dir $@) && $(CC) $(CFLAGS) -Isrc -o $@ $^ $(LDFLAGS) $(LDLIBS)

unit: $(UNIT_BIN) $(BUILD)/tests/period_ends

deps:
	$(Q)scripts/deps.sh

run: deps
	$(Q)$(MAKE) --no-print-directory all
	$(Q)scripts/run.sh

test: deps
	$(Q)$(MAKE) --no-print-directory all unit
	$(Q)tests/run.sh

# The shared suites against a live MongoDB replica set: make test-mongo MONGO_URI=mongodb://...
test-mongo: deps
	$(Q)test -n "$(MONGO_URI)" || { echo "test-mongo: set MONGO_URI to a MongoDB replica set"; exit 2; }
	$(Q)$(MAKE) --no-print-directory all
	$(Q)MONGO_URI="$(MONGO_URI)" NUMATIX_SUITES="test_mongo_live" NUMATIX_PG_SUITES="" NUMATIX_STRIPE_SUITES="" tests/run.sh

bench: deps
	$(Q)$(MAKE) --no-print-directory all
	$(Q)scripts/bench.sh

# Every suite that runs the service (concurrency and recovery included), against binaries built
# with AddressSanitizer and UBSan under build/asan: any report a process writes fails the run.
# (test_money is not among them: libfaketime, which moves its clock, deadlocks ASan's allocator
# as both start.)
ASAN_SUITES ?= test_api test_payments test_stripe test_durability test_hostile test_concurrency test_webhooks test_recovery test_endurance test_gateway \
	test_metrics test_operations test_cgi test_mongo_wire
ASAN_PG_SUITES ?= test_api test_hostile test_concurrency test_webhooks test_recovery test_pg_faults test_multihost
asan: deps
	$(Q)$(MAKE) --no-print-directory BUILD=build/asan SAN=address,undefined CC=clang BIN=build/asan/numatix build/asan/numatix unit
	$(Q)NUMATIX_BIN=$(CURDIR)/build/asan/numatix NUMATIX_UNIT_DIR=build/asan/tests NUMATIX_SANITIZE=1 \
		NUMATIX_SUITES="$(ASAN_SUITES)" NUMATIX_PG_SUITES="$(ASAN_PG_SUITES)" NUMATIX_STRIPE_SUITES="test_api test_payments" tests/run.sh

# libFuzzer targets (tests/fuzz/fuzz_*.c) over everything that reads what a client sends, built
# with clang and ASan+UBSan: each runs FUZZ_SECONDS from its committed seed corpus, then every
# saved crash (tests/fuzz/regressions/<target>/) is run again. A new crash fails and is kept there.
FUZZ_SECONDS ?= 20
FUZZ_BUILD   := build/fuzz
FUZZ_FLAGS   := -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer -g -O1
FUZZ_TARGETS := $(patsubst tests/fuzz/%.c,%,$(wildcard tests/fuzz/fuzz_*.c))
FUZZ_BIN     := $(FUZZ_TARGETS:%=$(FUZZ_BUILD)/%)

$(FUZZ_BUILD)/obj/%.o: src/%.c
	$(call quiet,CC,$@)mkdir -p $(dir $@) && clang $(filter-out -O2 -Werror -Wformat=2,$(CFLAGS)) $(FUZZ_FLAGS) -fsanitize=fuzzer-no-link -Wno-error -c -o $@ $<

$(FUZZ_BUILD)/%: tests/fuzz/%.c $(LIBOBJ:$(BUILD)/%=$(FUZZ_BUILD)/obj/%)
	$(call quiet,LD,$@)clang $(filter-out -O2 -Werror -Wformat=2,$(CFLAGS)) $(FUZZ_FLAGS) -fsanitize=fuzzer -Isrc -o $@ $^ $(LDLIBS)

.SECONDARY: $(LIBOBJ:$(BUILD)/%=$(FUZZ_BUILD)/obj/%)

fuzz: $(FUZZ_BIN)
	$(Q)tests/fuzz/run.sh $(FUZZ_SECONDS) $(FUZZ_TARGETS)

install: all
	$(Q)install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(DATADIR)/www $(DESTDIR)$(UNITDIR) $(DESTDIR)$(SYSUSERSDIR) \
		$(DESTDIR)$(SYSCONFDIR)/numatix $(DESTDIR)$(SYSCONFDIR)/nginx/numatix \
		$(DESTDIR)$(SYSCONFDIR)/nginx/sites-available $(DESTDIR)$(SYSCONFDIR)/logrotate.d
	$(Q)install -m 0755 $(BIN) $(DESTDIR)$(BINDIR)/numatix
	$(Q)install -m 0644 www/*.html www/*.js www/*.css www/*.svg www/openapi.yaml $(DESTDIR)$(DATADIR)/www/
	$(Q)install -m 0644 README.md $(DESTDIR)$(DATADIR)/
	$(Q)install -m 0644 nginx/numatix-locations.conf nginx/numatix-fastcgi.conf nginx/numatix-limits.conf nginx/numatix-errors.conf \
		nginx/security-headers.conf $(DESTDIR)$(SYSCONFDIR)/nginx/numatix/
	$(Q)sed -e 's|root /srv/numatix/www;|root $(DATADIR)/www;|' nginx/numatix.conf > $(DESTDIR)$(SYSCONFDIR)/nginx/sites-available/numatix
	$(Q)for u in numatix.service numatix-reap.service; do $(SUBST) scripts/install/$$u.in > $(DESTDIR)$(UNITDIR)/$$u; done
	$(Q)install -m 0644 scripts/install/numatix-reap.timer $(DESTDIR)$(UNITDIR)/
	$(Q)install -m 0644 scripts/install/numatix.sysusers $(DESTDIR)$(SYSUSERSDIR)/numatix.conf
	$(Q)install -m 0644 scripts/install/numatix.logrotate $(DESTDIR)$(SYSCONFDIR)/logrotate.d/numatix
	$(Q)conf=$(DESTDIR)$(SYSCONFDIR)/numatix/numatix.conf; [ -e $$conf ] && echo "install: kept $$conf" || \
		{ $(SUBST) scripts/install/numatix.conf.in > $$conf && chmod 0640 $$conf; }
	@echo "installed under $(DESTDIR)$(PREFIX); next: systemd-sysusers, systemctl enable --now numatix," \
		"ln -s ../sites-available/numatix $(SYSCONFDIR)/nginx/sites-enabled/, systemctl reload nginx"

uninstall:
	rm -f $(DESTDIR)$(BINDIR)/numatix $(DESTDIR)$(UNITDIR)/numatix.service $(DESTDIR)$(UNITDIR)/numatix-reap.service \
		$(DESTDIR)$(UNITDIR)/numatix-reap.timer $(DESTDIR)$(SYSUSERSDIR)/numatix.conf \
		$(DESTDIR)$(SYSCONFDIR)/logrotate.d/numatix $(DESTDIR)$(SYSCONFDIR)/nginx/sites-available/numatix
	rm -rf $(DESTDIR)$(DATADIR) $(DESTDIR)$(SYSCONFDIR)/nginx/numatix
	@echo "kept $(DESTDIR)$(SYSCONFDIR)/numatix/numatix.conf and the data in /var/lib/numatix"

clean:
	rm -rf build $(BIN)

-include $(OBJ:.o=.d) $(UNIT_BIN:=.d)
