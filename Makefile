# carrier: build, run, test.  See README.md.
#
#   make            build build/carrierd and build/carrier
#   make run        install missing deps, build, run carrierd in the foreground
#   make test       install missing deps, then every test (unit, ASan+UBSan,
#                   catalogue, fuzz smoke, end-to-end)
#   make fuzz       run every libFuzzer harness for FUZZ_SECONDS each
#   make install    install binaries and an example config under PREFIX

PREFIX    ?= /usr/local
DESTDIR   ?=
CC        ?= cc
CLANG     ?= clang
OPT       ?= -O2
PYTHON    ?= /usr/bin/python3
FUZZ_SECONDS ?= 60
FUZZ_SMOKE_SECONDS ?= 5
VERSION   := $(shell cat VERSION 2>/dev/null || echo 0.0.0)

PKGS      := libevent libevent_pthreads libevent_openssl lmdb inih openssl libunbound
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS  := $(shell pkg-config --libs $(PKGS) 2>/dev/null)

WARN      := -Wall -Wextra -Wshadow -Wstrict-prototypes -Wmissing-prototypes \
             -Wformat=2 -Wno-unused-parameter -Wvla -Werror
BASE_CFLAGS := -std=c17 -D_GNU_SOURCE -DCARRIER_VERSION='"$(VERSION)"' \
             -iquote src $(PKG_CFLAGS) $(WARN)
CFLAGS    ?= $(OPT) -g
# gcc warns when snprintf may truncate; bounded truncation is the design.
GCC_WARN  := $(if $(findstring clang,$(shell $(CC) --version 2>/dev/null)),,-Wno-format-truncation)
LDLIBS    := $(PKG_LIBS) -lcrypt -lpthread -lm

MAINS     := src/carrierd.c src/carrier.c
LIB_SRCS  := $(filter-out $(MAINS),$(wildcard src/*.c))
TEST_SRCS := $(wildcard tests/unit/test_*.c)
FUZZ_SRCS := $(wildcard fuzz/fuzz_*.c)

# Three builds share the sources: normal (gcc), sanitizers (clang ASan+UBSan)
# and fuzzing (clang libFuzzer).  Each has its own object directory.
B         := build
ASAN_FLAGS := -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined \
              -fno-sanitize-recover=all
FUZZ_FLAGS := -O1 -g -fsanitize=fuzzer-no-link,address,undefined \
              -DCARRIER_FUZZING

lib_objs   = $(patsubst src/%.c,$(1)/obj/%.o,$(LIB_SRCS))

.PHONY: all run test unit unit-asan check-events check-layers fuzz fuzz-smoke \
        crashtest e2e deps deps-build install clean docs bench

all: $(B)/carrierd $(B)/carrier

# ---- normal build ------------------------------------------------------
$(B)/obj/%.o: src/%.c $(wildcard src/*.h) src/events.def | $(B)/obj
	$(CC) $(BASE_CFLAGS) $(GCC_WARN) $(CFLAGS) -MMD -MP -c -o $@ $<

$(B)/libcarrier.a: $(call lib_objs,$(B))
	rm -f $@ && ar rcs $@ $^

$(B)/carrierd: $(B)/obj/carrierd.o $(B)/libcarrier.a
	$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS)

$(B)/carrier: $(B)/obj/carrier.o $(B)/libcarrier.a
	$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS)

$(B)/test/%: tests/unit/%.c tests/unit/*.h $(B)/libcarrier.a | $(B)/test
	$(CC) $(BASE_CFLAGS) $(GCC_WARN) $(CFLAGS) -Itests/unit -o $@ $< $(B)/libcarrier.a \
		$(LDLIBS) -lcmocka

# ---- sanitizer build ---------------------------------------------------
$(B)/asan/obj/%.o: src/%.c $(wildcard src/*.h) src/events.def | $(B)/asan/obj
	$(CLANG) $(BASE_CFLAGS) $(ASAN_FLAGS) -c -o $@ $<

$(B)/asan/libcarrier.a: $(call lib_objs,$(B)/asan)
	rm -f $@ && ar rcs $@ $^

$(B)/asan/carrierd: $(B)/asan/obj/carrierd.o $(B)/asan/libcarrier.a
	$(CLANG) $(ASAN_FLAGS) -o $@ $^ $(LDLIBS)

$(B)/asan/carrier: $(B)/asan/obj/carrier.o $(B)/asan/libcarrier.a
	$(CLANG) $(ASAN_FLAGS) -o $@ $^ $(LDLIBS)

$(B)/asan/test/%: tests/unit/%.c tests/unit/*.h $(B)/asan/libcarrier.a | $(B)/asan/test
	$(CLANG) $(BASE_CFLAGS) $(ASAN_FLAGS) -Itests/unit -o $@ $< \
		$(B)/asan/libcarrier.a $(LDLIBS) -lcmocka

# ---- fuzz build --------------------------------------------------------
$(B)/fuzz/obj/%.o: src/%.c $(wildcard src/*.h) src/events.def | $(B)/fuzz/obj
	$(CLANG) $(BASE_CFLAGS) $(FUZZ_FLAGS) -c -o $@ $<

$(B)/fuzz/libcarrier.a: $(call lib_objs,$(B)/fuzz)
	rm -f $@ && ar rcs $@ $^

$(B)/fuzz/%: fuzz/%.c $(B)/fuzz/libcarrier.a | $(B)/fuzz/obj
	$(CLANG) $(BASE_CFLAGS) $(FUZZ_FLAGS) -fsanitize=fuzzer -o $@ $< \
		$(B)/fuzz/libcarrier.a $(LDLIBS)

$(B)/obj $(B)/test $(B)/asan/obj $(B)/asan/test $(B)/fuzz/obj:
	mkdir -p $@

# ---- durability campaigns (issue 8): fault shim, spool poker -------------
FAULT_TOOLS := $(B)/fault/libfault.so $(B)/fault/spoolpoke

$(B)/fault/libfault.so: tests/fault/fault.c
	@mkdir -p $(@D)
	$(CC) -std=c17 -D_GNU_SOURCE -O2 -g $(WARN) $(GCC_WARN) -shared -fPIC -o $@ $< -ldl -lpthread

$(B)/fault/spoolpoke: tests/fault/spoolpoke.c
	@mkdir -p $(@D)
	$(CC) -std=c17 -D_GNU_SOURCE -O2 -g $(WARN) $(GCC_WARN) -o $@ $< -llmdb

-include $(wildcard $(B)/obj/*.d)

# ---- developer commands ------------------------------------------------
deps:
	@scripts/deps test

deps-build:
	@scripts/deps build

run: deps-build
	@$(MAKE) --no-print-directory all
	@mkdir -p var
	exec $(B)/carrierd -f

UNIT_BINS = $(patsubst tests/unit/%.c,$(B)/test/%,$(TEST_SRCS))
ASAN_BINS = $(patsubst tests/unit/%.c,$(B)/asan/test/%,$(TEST_SRCS))
FUZZ_BINS = $(patsubst fuzz/%.c,$(B)/fuzz/%,$(FUZZ_SRCS))

unit: $(UNIT_BINS)
	@scripts/run-unit $(UNIT_BINS)

unit-asan: $(ASAN_BINS)
	@ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
	 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	 scripts/run-unit $(ASAN_BINS)

check-events:
	@$(PYTHON) scripts/events.py check

docs: docs/events.md

docs/events.md: src/events.def scripts/events.py
	$(PYTHON) scripts/events.py doc > $@

check-layers:
	@scripts/check-layers

fuzz-smoke: $(FUZZ_BINS)
	@scripts/run-fuzz $(FUZZ_SMOKE_SECONDS) $(FUZZ_BINS)

fuzz: $(FUZZ_BINS)
	@scripts/run-fuzz $(FUZZ_SECONDS) $(FUZZ_BINS)

e2e: all $(B)/asan/carrierd $(B)/asan/carrier $(FAULT_TOOLS)
	@scripts/run-e2e

test: deps
	@$(MAKE) --no-print-directory all
	@$(MAKE) --no-print-directory check-layers check-events
	@$(PYTHON) scripts/check-docs
	@$(MAKE) --no-print-directory unit
	@$(MAKE) --no-print-directory unit-asan
	@$(MAKE) --no-print-directory fuzz-smoke
	@$(MAKE) --no-print-directory e2e

# make crashtest CRASH_ARGS="--kills 10000"  (tests/crash/crashtest.py --help)
CRASH_ARGS ?=
crashtest: all $(FAULT_TOOLS)
	@$(PYTHON) tests/crash/crashtest.py $(CRASH_ARGS)

install: all
	install -d $(DESTDIR)$(PREFIX)/sbin $(DESTDIR)$(PREFIX)/bin \
		$(DESTDIR)/etc/carrier
	install -m 0755 $(B)/carrierd $(DESTDIR)$(PREFIX)/sbin/carrierd
	install -m 0755 $(B)/carrier $(DESTDIR)$(PREFIX)/bin/carrier
	[ -e $(DESTDIR)/etc/carrier/carrier.conf ] || \
		install -m 0644 etc/carrier.conf $(DESTDIR)/etc/carrier/carrier.conf

# ---- benchmark (issue 6): carrier against Postfix, side by side ---------
# make bench BENCH_ARGS="--quick"   (see bench/bench.py --help)
BENCH_ARGS ?=
bench:
	@scripts/deps bench
	@$(MAKE) --no-print-directory B=build/bench OPT=-O2 build/bench/carrierd build/bench/carrier
	@$(PYTHON) bench/bench.py --build build/bench $(BENCH_ARGS)

clean:
	rm -rf $(B)
