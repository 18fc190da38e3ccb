# Numatix: one plain Makefile. `make` builds cgi-bin/numatix; `make run` starts the whole
# service; `make test` runs every suite; `make bench` measures. run, test and bench install
# what a fresh Debian 12 machine lacks first (scripts/deps.sh), then build in a sub-make so
# pkg-config sees the freshly installed libraries.

PKGS     := fcgi json-c sqlite3 uuid libcrypto libmongoc-1.0 libpq
BUILD    ?= build
BIN      ?= cgi-bin/numatix
SAN      ?=
CC       ?= cc
WARN     := -Wall -Wextra -Werror -Wstrict-prototypes -Wmissing-prototypes -Wshadow \
            -Wpointer-arith -Wcast-qual -Wsign-compare -Wformat=2
CFLAGS   ?= -O2 -g
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

.PHONY: all run test test-mongo unit bench asan deps clean

all: $(BIN)

$(BIN): $(OBJ)
	$(call quiet,LD,$@)mkdir -p $(dir $@) && $(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/%.o: src/%.c
	$(call quiet,CC,$@)mkdir -p $(dir $@) && $(CC) $(CFLAGS) -c -o $@ $<

$(BUILD)/tests/%: tests/unit/%.c $(UNIT_LIB) $(LIBOBJ)
	$(call quiet,CC,$@)mkdir -p $(dir $@) && $(CC) $(CFLAGS) -Isrc -Itests/unit -o $@ $< $(UNIT_LIB) $(LIBOBJ) $(LDFLAGS) $(LDLIBS) -lcmocka

unit: $(UNIT_BIN)

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
	$(Q)MONGO_URI="$(MONGO_URI)" NUMATIX_SUITES="test_mongo_live" NUMATIX_PG_SUITES="" tests/run.sh

bench: deps
	$(Q)$(MAKE) --no-print-directory all
	$(Q)scripts/bench.sh

# The suites that need no long runs, against the binary built with AddressSanitizer and UBSan
# (any report fails them); then the normal binary is linked again.
asan: deps
	$(Q)$(MAKE) --no-print-directory BUILD=build/asan SAN=address,undefined -B $(BIN)
	$(Q)ASAN_OPTIONS=detect_leaks=1 NUMATIX_SUITES="test_api test_hostile test_gateway test_mongo_wire" \
		tests/run.sh; rc=$$?; $(MAKE) --no-print-directory -B $(BIN) >/dev/null; exit $$rc

clean:
	rm -rf build $(BIN)

-include $(OBJ:.o=.d) $(UNIT_BIN:=.d)
