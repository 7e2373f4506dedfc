# snapcell — see README.md. Every target does its own set-up (apt packages, .venv, guests).
PY      := .venv/bin/python
GUESTS  := build/guests/simpleguest.elf build/guests/simpleguest-debug.elf build/guests/adversary.elf \
           build/guests/cpuprobe.elf
SDK     := $(wildcard snapcell/guest/sdk/*)
# Interpreter guests (docs/code-sandboxes.md): third-party sources fetched by sha256 pin, built
# once into static libraries, linked with our glue. Everything is cached under build/.
CODE_GUESTS := build/guests/js.elf build/guests/lua.elf build/guests/python.elf
NATIVE      := build/native/qjs build/native/lua build/cpython/obj/python-mimalloc
QJS_DIR     := build/third_party/quickjs-ng
LUA_DIR     := build/third_party/lua
QJS_SRCS     = $(addprefix $(QJS_DIR)/,quickjs.c libregexp.c libunicode.c dtoa.c)
LUA_CORE    := lapi lauxlib lbaselib lcode lcorolib lctype ldblib ldebug ldo ldump lfunc lgc linit \
               liolib llex lmathlib lmem loadlib lobject lopcodes loslib lparser lstate lstring \
               lstrlib ltable ltablib ltm lundump lutf8lib lvm lzio
LUA_SRCS     = $(addprefix $(LUA_DIR)/,$(addsuffix .c,$(LUA_CORE)))
CODEBOX     := guests/common/codebox.c guests/common/codebox.h
# mimalloc (docs/benchmarks.md, "Interpreters"): the Lua and Python guests take their small
# blocks from it (musl's mallocng makes a system call for many small frees and mallocs, and
# each costs ~20 µs in a guest); large blocks stay with musl's malloc.
MIMALLOC    := build/lib/libmimalloc.a
MIMALLOC_SRC := build/third_party/mimalloc
MIMALLOC_INC := build/mimalloc/include
CBSTREAM    := guests/common/cbstream.c guests/common/cbstream.h
# The Python guest: CPython 3.11 + zlib built static with musl once (~6 min on 2 cores, cached
# by input hash under build/cpython/), its standard library as a read-only file system image
# linked into the guest (docs/code-sandboxes.md, "Python").
CPY         := build/cpython
CPY_SRC     := build/third_party/cpython
CPY_STAMP   := $(CPY)/.inputs-sha256
PY_IMAGE    := build/python/stdlib_image.S
PY_SOCKETS_C := guests/python/sockets.c guests/python/sockets_table.c guests/python/sockets_ops.c \
                guests/python/sockets_poll.c
PY_SOCKETS  := $(PY_SOCKETS_C) guests/python/sockets.h guests/python/sockets_table.h
# bzip2, liblzma and SQLite for _bz2, _lzma and _sqlite3 (built static with CPython)
CPY_DBLIB_SRCS := $(addsuffix /.snapcell-sha256,$(addprefix build/third_party/,bzip2 xz-utils sqlite3))
CPY_DBLIBS  := $(addprefix --lib $(CPY)/prefix/lib/,libsqlite3.a liblzma.a libbz2.a)
# OpenSSL for _ssl and _hashlib, and the CA bundle of the guest's image (scripts/build_openssl.sh)
OPENSSL_STAMP := build/openssl/.inputs-sha256
CPY_DBLIBS  += $(addprefix --lib build/openssl/prefix/lib/,libssl.a libcrypto.a)
# The dynamic Python guest (docs/code-sandboxes.md, "Packages and images"): the same CPython
# linked as a dynamic musl 1.2.5 executable that loads PyPI's musllinux wheels unchanged, with
# musl's dynamic linker beside it (the host loads that file as the guest's interpreter).
MUSL        := build/musl
MUSL_STAMP  := $(MUSL)/.inputs-sha256
PY_DYN      := build/guests/python-dyn.elf build/guests/ld-musl-x86_64.so.1 build/guests/python-dyn.img
CTYPES_SO   := _ctypes.cpython-311-x86_64-linux-musl.so
# The default data image (docs/code-sandboxes.md, "Packages and images"): the wheels pinned by
# images/data/requirements.lock, warmed with the modules of images/data/preload.txt imported;
# rebuilt when either or the dynamic guest changes.
DATA_IMAGE  := build/images/data/.lock-sha256
DATA_PRELOAD = $(shell cat images/data/preload.txt)

.PHONY: all setup guests code-guests python-dyn data-image native-interpreters demo test test-fast bench lint typecheck clean goldens soak fuzz cpython-referee package-referee

all: demo

setup: .venv/.snapcell-installed

.venv/.snapcell-installed: pyproject.toml scripts/bootstrap.sh
	bash scripts/bootstrap.sh

guests: setup $(GUESTS) $(CODE_GUESTS) $(PY_DYN)

code-guests: setup $(CODE_GUESTS)

python-dyn: setup $(PY_DYN)

data-image: setup $(DATA_IMAGE)

$(DATA_IMAGE): images/data/requirements.lock images/data/preload.txt $(PY_DYN) snapcell/code/images.py
	rm -rf build/images/data
	$(PY) -m snapcell image build python -r images/data/requirements.lock \
	  --preload $(DATA_PRELOAD) -o build/images/data:latest
	sha256sum images/data/requirements.lock | cut -d' ' -f1 > $@

native-interpreters: $(NATIVE)

build/third_party/%/.snapcell-sha256: third_party/sources.toml scripts/fetch_third_party.py | setup
	$(PY) scripts/fetch_third_party.py $*
	touch $@

build/lib/libquickjs.a: $(QJS_DIR)/.snapcell-sha256
	$(PY) -m snapcell guest build --static-lib -D _GNU_SOURCE $(QJS_SRCS) -o $@

build/lib/liblua.a: $(LUA_DIR)/.snapcell-sha256
	$(PY) -m snapcell guest build --static-lib $(LUA_SRCS) -o $@

# mimalloc's static.c (the mi_* functions; malloc stays musl's), its options patched: no
# decommits (madvise calls, and the clock reads that time them: host exits)
$(MIMALLOC): $(MIMALLOC_SRC)/.snapcell-sha256 third_party/patches/mimalloc-options.patch
	rm -rf build/mimalloc && cp -r $(MIMALLOC_SRC) build/mimalloc
	patch -s -d build/mimalloc -p1 < third_party/patches/mimalloc-options.patch
	$(PY) -m snapcell guest build --static-lib -D NDEBUG -D MI_STAT=0 \
	  -I $(MIMALLOC_INC) build/mimalloc/src/static.c -o $@

# the JS guest's prelude (web APIs, timers) as a C byte array
build/js/prelude.h: guests/js/prelude.js
	mkdir -p build/js
	$(PY) -c "import sys; d = open(sys.argv[1], 'rb').read(); open(sys.argv[2], 'w').write('static const char js_prelude[] = {' + ','.join(map(str, d)) + ',0};\n')" $< $@

# the JS guest's Intl: formatjs polyfills + CLDR data pinned by guests/js/intl/package-lock.json,
# bundled by esbuild (scripts/build_js_intl.sh, cached by the hash of its inputs)
JS_INTL_SRCS := $(filter-out guests/js/intl/node_modules/%,$(wildcard guests/js/intl/*)) \
                scripts/build_js_intl.sh
build/js/intl.S: $(JS_INTL_SRCS)
	bash scripts/build_js_intl.sh

build/guests/js.elf: guests/js/js_guest.c build/js/prelude.h build/js/intl.S $(CODEBOX) $(CBSTREAM) \
                     build/lib/libquickjs.a $(SDK) | setup
	$(PY) -m snapcell guest build guests/js/js_guest.c guests/common/codebox.c guests/common/cbstream.c \
	  build/js/intl.S -I guests/common -I build/js -I $(QJS_DIR) --lib build/lib/libquickjs.a -o $@

build/guests/lua.elf: guests/lua/lua_guest.c $(CODEBOX) $(CBSTREAM) build/lib/liblua.a $(MIMALLOC) $(SDK) | setup
	$(PY) -m snapcell guest build guests/lua/lua_guest.c guests/common/codebox.c guests/common/cbstream.c \
	  -I guests/common -I $(LUA_DIR) -I $(MIMALLOC_INC) --lib build/lib/liblua.a --lib $(MIMALLOC) -o $@

$(CPY_STAMP): build/third_party/cpython/.snapcell-sha256 build/third_party/zlib/.snapcell-sha256 \
              $(CPY_DBLIB_SRCS) \
              build/third_party/libffi/.snapcell-sha256 \
              scripts/build_cpython.sh $(wildcard third_party/patches/cpython-*.patch)
	JOBS=2 bash scripts/build_cpython.sh
	touch $@

$(OPENSSL_STAMP): build/third_party/openssl/.snapcell-sha256 \
                  build/third_party/ca-certificates/.snapcell-sha256 scripts/build_openssl.sh \
                  $(wildcard third_party/patches/openssl-*.patch)
	JOBS=2 bash scripts/build_openssl.sh
	touch $@

$(CPY_STAMP) $(PY_IMAGE) build/guests/python-dyn.img: $(OPENSSL_STAMP)

$(PY_IMAGE): $(CPY_STAMP) scripts/build_python_image.py snapcell/guest/fsimage.py \
             guests/python/_snapcell_runner.py guests/python/_snapcell_sandbox.py
	$(CPY)/obj/python scripts/build_python_image.py build/python

build/guests/python.elf: guests/python/python_guest.c $(PY_SOCKETS) $(CODEBOX) $(PY_IMAGE) $(MIMALLOC) $(SDK) | setup
	$(PY) -m snapcell guest build guests/python/python_guest.c $(PY_SOCKETS_C) \
	  guests/common/codebox.c $(PY_IMAGE) \
	  -I guests/common -I $(CPY_SRC)/Include -I $(CPY)/obj -I $(CPY)/prefix/include -I $(MIMALLOC_INC) \
	  --lib $(CPY)/obj/libpython3.11.a \
	  --lib $(CPY)/obj/Modules/expat/libexpat.a --lib $(CPY)/obj/Modules/_decimal/libmpdec/libmpdec.a \
	  --lib $(CPY)/prefix/lib/libz.a $(CPY_DBLIBS) --lib $(MIMALLOC) -o $@

$(MUSL_STAMP): build/third_party/musl/.snapcell-sha256 build/third_party/zlib/.snapcell-sha256 \
              scripts/build_musl.sh
	JOBS=2 bash scripts/build_musl.sh
	touch $@

build/guests/python-dyn.img: $(CPY_STAMP) $(MUSL_STAMP) scripts/build_python_image.py \
             snapcell/guest/fsimage.py guests/python/_snapcell_runner.py guests/python/_snapcell_dynamic.py \
             guests/python/_snapcell_sandbox.py
	$(CPY)/obj/python scripts/build_python_image.py build/python-dyn --name base \
	  --lib-dynload $(CPY)/obj/$(CTYPES_SO) --usr-lib $(MUSL)/lib/libz.so.1
	cp build/python-dyn/base.img $@

build/guests/ld-musl-x86_64.so.1: $(MUSL_STAMP)
	mkdir -p build/guests && cp $(MUSL)/lib/libc.so $@

build/guests/python-dyn.elf: guests/python/python_guest.c $(PY_SOCKETS) guests/python/libregion.S \
             guests/python/image_slot.S $(CODEBOX) $(CPY_STAMP) $(MUSL_STAMP) $(MIMALLOC) $(SDK) | setup
	$(PY) -m snapcell guest build guests/python/python_guest.c $(PY_SOCKETS_C) \
	  guests/common/codebox.c \
	  guests/python/libregion.S guests/python/image_slot.S --dynamic $(MUSL) \
	  -I guests/common -I $(CPY_SRC)/Include -I $(CPY)/obj -I $(CPY)/prefix/include -I $(MIMALLOC_INC) \
	  --whole-lib $(CPY)/obj/libpython3.11.a \
	  --lib $(CPY)/obj/Modules/expat/libexpat.a --lib $(CPY)/obj/Modules/_decimal/libmpdec/libmpdec.a \
	  --lib $(CPY)/prefix/lib/libz.a $(CPY_DBLIBS) --lib $(MIMALLOC) -o $@

# CPython's own Lib/test modules inside a sandbox and natively (docs/code-sandboxes.md)
cpython-referee: code-guests
	$(PY) scripts/cpython_referee.py

# Native builds of the same interpreter sources (the benchmark peer, the test-suite comparison)
build/native/lua: $(LUA_DIR)/.snapcell-sha256
	mkdir -p build/native
	cc -O2 -w -DLUA_USE_LINUX -o $@ $(LUA_SRCS) $(LUA_DIR)/lua.c -lm -ldl

# The guest's static CPython natively with the guest's allocator (mimalloc) for its raw domain:
# the bench's split of the Python gap into the build and the VM (benchmarks/python_mimalloc.c)
$(CPY)/obj/python-mimalloc: benchmarks/python_mimalloc.c $(CPY_STAMP) $(MIMALLOC)
	musl-gcc -static -no-pie -O2 -Wall -I $(CPY_SRC)/Include -I $(CPY)/obj -I $(MIMALLOC_INC) \
	  -o $@ $< $(CPY)/obj/libpython3.11.a $(CPY)/obj/Modules/expat/libexpat.a \
	  $(CPY)/obj/Modules/_decimal/libmpdec/libmpdec.a $(CPY)/prefix/lib/libz.a \
	  $(filter-out --lib,$(CPY_DBLIBS)) $(MIMALLOC) -lm

build/native/qjs: guests/js/qjs_native.c $(QJS_DIR)/.snapcell-sha256
	mkdir -p build/native
	cc -O2 -w -D_GNU_SOURCE -I $(QJS_DIR) -o $@ guests/js/qjs_native.c $(QJS_SRCS) -lm -lpthread

build/guests/%.elf: guests/%.c $(SDK) | setup
	$(PY) -m snapcell guest build $< -o $@

demo: guests $(DATA_IMAGE)
	$(PY) -m snapcell demo build/guests/simpleguest.elf --image build/images/data:latest

# numpy's and pandas' own tests in a sandbox on the data image and natively under the same musl
# (scripts/package_referee.py): the native interpreter is the guest's CPython linked as a plain
# dynamic musl program, and the wheels of both locks unpacked under build/referee.
$(CPY)/obj/python-musl-dyn: $(CPY_STAMP) $(MUSL_STAMP)
	$(MUSL)/bin/musl-gcc -no-pie -o $@ $(CPY)/obj/Programs/python.o -Wl,--export-dynamic \
	  -Wl,--whole-archive $(CPY)/obj/libpython3.11.a -Wl,--no-whole-archive \
	  $(CPY)/obj/Modules/expat/libexpat.a $(CPY)/obj/Modules/_decimal/libmpdec/libmpdec.a \
	  $(CPY)/prefix/lib/libz.a $(filter-out --lib,$(CPY_DBLIBS)) \
	  -lm -Wl,--dynamic-linker=$(abspath $(MUSL))/lib/libc.so
build/referee/.ready: images/data/requirements.lock images/referee/requirements.lock \
                      scripts/package_referee.py | setup
	$(PY) scripts/package_referee.py --prepare
	touch $@
package-referee: $(DATA_IMAGE) $(CPY)/obj/python-musl-dyn build/referee/.ready
	$(PY) scripts/package_referee.py

test: guests $(DATA_IMAGE) build/native/lua benchmarks/c_floor $(CPY)/obj/python-musl-dyn \
      $(CPY)/obj/python-mimalloc \
      build/referee/.ready
	$(PY) -m pytest -q tests

# Mutation fuzzing of guest output messages and snapshot files (FUZZ_SECONDS per target).
FUZZ_SECONDS ?= 300
fuzz: guests
	$(PY) -m tests.adversarial.fuzz --seconds $(FUZZ_SECONDS)

# Long stress runs and load tests that assert latencies (never part of `make test`):
# tests/soak_serve.py is `snapcell serve` under 1,000 slow connections beside 64 good clients.
soak: guests
	SNAPCELL_STRESS_SECONDS=300 $(PY) -m pytest -q tests/test_interrupts.py -k stress
	$(PY) -m pytest -q -s tests/soak_serve.py

bench: guests $(NATIVE) benchmarks/c_floor
	$(PY) -m snapcell bench

benchmarks/c_floor: benchmarks/c_floor.c
	cc -O2 -Wall -o $@ $<

goldens: guests
	$(PY) scripts/make_goldens.py

typecheck: setup
	$(PY) -m mypy

lint: setup
	$(PY) -m ruff check snapcell tests scripts

clean:
	rm -rf build benchmarks/c_floor

build/guests/%-debug.elf: guests/%.c $(SDK) | setup
	$(PY) -m snapcell guest build --debug $< -o $@
