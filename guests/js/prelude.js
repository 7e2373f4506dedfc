// The JS guest's prelude (guests/js/js_guest.c evaluates it once while the guest initialises,
// so it is part of the warm snapshot): the web APIs agents expect on top of ECMAScript, the
// timers of the guest's event loop, and locale formatting that never formats wrongly in
// silence. `sc` holds the guest's native helpers: now() (the host's monotonic clock in ms) and
// randomBytes(n) (an ArrayBuffer from the sandbox's entropy, fresh in every sandbox).
// The value of this script is the timer control object js_guest.c drives after each run.
(function (global, sc) {
    "use strict";
    const define = (obj, name, value) => Object.defineProperty(obj, name,
        { value, writable: true, configurable: true, enumerable: false });
    const SANDBOX = "in the snapcell sandbox";

    // ---- timers and microtasks ------------------------------------------------------------
    const timers = new Map();           // id -> {fn, args, at, every, seq}
    let nextId = 1, seq = 0;
    const control = { count: 0 };
    function addTimer(fn, ms, args, repeat) {
        if (typeof fn !== "function")
            throw new TypeError("the callback must be a function (strings are not evaluated)");
        let delay = Number(ms);
        if (!(delay >= 1)) delay = repeat ? 1 : 0;
        const id = nextId++;
        timers.set(id, { fn, args, at: sc.now() + delay, every: repeat ? delay : 0, seq: seq++ });
        control.count = timers.size;
        return id;
    }
    function clearTimer(id) {
        timers.delete(Number(id));
        control.count = timers.size;
    }
    // The earliest timer: run it when due and return 0, else the ms to wait for it (-1: none).
    control.fire = function () {
        let best = null, bestId = 0;
        for (const [id, t] of timers)
            if (best === null || t.at < best.at || (t.at === best.at && t.seq < best.seq)) {
                best = t; bestId = id;
            }
        if (best === null) return -1;
        const wait = best.at - sc.now();
        if (wait > 0) return wait;
        if (best.every) {
            best.at += best.every; best.seq = seq++;
        } else {
            timers.delete(bestId);
        }
        control.count = timers.size;
        best.fn.apply(undefined, best.args);
        return 0;
    };
    define(global, "setTimeout", function setTimeout(fn, ms, ...args) { return addTimer(fn, ms, args, false); });
    define(global, "setInterval", function setInterval(fn, ms, ...args) { return addTimer(fn, ms, args, true); });
    define(global, "clearTimeout", function clearTimeout(id) { clearTimer(id); });
    define(global, "clearInterval", function clearInterval(id) { clearTimer(id); });
    define(global, "setImmediate", function setImmediate(fn, ...args) { return addTimer(fn, 0, args, false); });
    define(global, "clearImmediate", function clearImmediate(id) { clearTimer(id); });
    define(global, "queueMicrotask", function queueMicrotask(fn) {
        if (typeof fn !== "function") throw new TypeError("queueMicrotask: the callback must be a function");
        Promise.resolve().then(() => fn());
    });

    // ---- base64 ---------------------------------------------------------------------------
    const B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    define(global, "btoa", function btoa(s) {
        s = String(s);
        let out = "";
        for (let i = 0; i < s.length; i += 3) {
            const a = s.charCodeAt(i), b = s.charCodeAt(i + 1), c = s.charCodeAt(i + 2);
            if (a > 255 || b > 255 || c > 255)
                throw new DOMException("btoa: the string contains characters outside Latin1", "InvalidCharacterError");
            const n = (a << 16) | ((b || 0) << 8) | (c || 0);
            out += B64[n >> 18] + B64[(n >> 12) & 63] +
                (i + 1 < s.length ? B64[(n >> 6) & 63] : "=") + (i + 2 < s.length ? B64[n & 63] : "=");
        }
        return out;
    });
    define(global, "atob", function atob(s) {
        s = String(s).replace(/[\t\n\f\r ]/g, "");
        if (s.length % 4 === 0) s = s.replace(/==?$/, "");
        if (s.length % 4 === 1 || /[^A-Za-z0-9+/]/.test(s))
            throw new DOMException("atob: the string is not correctly encoded", "InvalidCharacterError");
        let out = "", bits = 0, n = 0;
        for (const ch of s) {
            n = (n << 6) | B64.indexOf(ch); bits += 6;
            if (bits >= 8) { bits -= 8; out += String.fromCharCode((n >> bits) & 255); }
        }
        return out;
    });

    // ---- DOMException ---------------------------------------------------------------------
    class DOMException extends Error {
        constructor(message = "", name = "Error") { super(message); define(this, "name", name); }
    }
    define(global, "DOMException", DOMException);

    // ---- TextEncoder / TextDecoder (UTF-8) ------------------------------------------------
    class TextEncoder {
        get encoding() { return "utf-8"; }
        encode(s = "") {
            s = String(s);
            const out = [];
            for (let i = 0; i < s.length; i++) {
                let c = s.charCodeAt(i);
                if (c >= 0xd800 && c < 0xdc00 && i + 1 < s.length) {
                    const d = s.charCodeAt(i + 1);
                    if (d >= 0xdc00 && d < 0xe000) { c = 0x10000 + ((c - 0xd800) << 10) + (d - 0xdc00); i++; }
                }
                if (c >= 0xd800 && c < 0xe000) c = 0xfffd;
                if (c < 0x80) out.push(c);
                else if (c < 0x800) out.push(0xc0 | (c >> 6), 0x80 | (c & 63));
                else if (c < 0x10000) out.push(0xe0 | (c >> 12), 0x80 | ((c >> 6) & 63), 0x80 | (c & 63));
                else out.push(0xf0 | (c >> 18), 0x80 | ((c >> 12) & 63), 0x80 | ((c >> 6) & 63), 0x80 | (c & 63));
            }
            return new Uint8Array(out);
        }
        encodeInto(s, dest) {
            const b = this.encode(s), n = Math.min(b.length, dest.length);
            dest.set(b.subarray(0, n));
            return { read: String(s).length, written: n };
        }
    }
    class TextDecoder {
        constructor(label = "utf-8", options = {}) {
            const l = String(label).trim().toLowerCase();
            if (l !== "utf-8" && l !== "utf8" && l !== "unicode-1-1-utf-8")
                throw new RangeError(`TextDecoder: only utf-8 is available ${SANDBOX} (got '${label}')`);
            this.fatal = !!options.fatal;
            this.ignoreBOM = !!options.ignoreBOM;
        }
        get encoding() { return "utf-8"; }
        decode(input) {
            if (input === undefined) return "";
            const b = input instanceof ArrayBuffer ? new Uint8Array(input)
                : new Uint8Array(input.buffer, input.byteOffset, input.byteLength);
            let out = "", i = 0;
            if (!this.ignoreBOM && b[0] === 0xef && b[1] === 0xbb && b[2] === 0xbf) i = 3;
            const bad = () => {
                if (this.fatal) throw new TypeError("TextDecoder: the data is not valid utf-8");
                out += "\ufffd";
            };
            while (i < b.length) {
                const c = b[i];
                let n = 0, cp = 0, min = 0;
                if (c < 0x80) { out += String.fromCharCode(c); i++; continue; }
                if (c >= 0xc2 && c < 0xe0) { n = 1; cp = c & 31; min = 0x80; }
                else if (c >= 0xe0 && c < 0xf0) { n = 2; cp = c & 15; min = 0x800; }
                else if (c >= 0xf0 && c < 0xf5) { n = 3; cp = c & 7; min = 0x10000; }
                else { bad(); i++; continue; }
                let j = 1;
                for (; j <= n && i + j < b.length && (b[i + j] & 0xc0) === 0x80; j++) cp = (cp << 6) | (b[i + j] & 63);
                if (j <= n || cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp < 0xe000)) { bad(); i += Math.max(1, j - 1); continue; }
                out += String.fromCodePoint(cp);
                i += n + 1;
            }
            return out;
        }
    }
    define(global, "TextEncoder", TextEncoder);
    define(global, "TextDecoder", TextDecoder);

    // ---- crypto ---------------------------------------------------------------------------
    const crypto = {
        getRandomValues(a) {
            if (!ArrayBuffer.isView(a) || a instanceof Float32Array || a instanceof Float64Array || a instanceof DataView)
                throw new TypeError("getRandomValues: an integer typed array is required");
            if (a.byteLength > 65536)
                throw new DOMException("getRandomValues: at most 65536 bytes", "QuotaExceededError");
            new Uint8Array(a.buffer, a.byteOffset, a.byteLength).set(new Uint8Array(sc.randomBytes(a.byteLength)));
            return a;
        },
        randomUUID() {
            const b = new Uint8Array(sc.randomBytes(16));
            b[6] = (b[6] & 0x0f) | 0x40; b[8] = (b[8] & 0x3f) | 0x80;
            const h = Array.from(b, x => x.toString(16).padStart(2, "0")).join("");
            return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
        },
    };
    Object.defineProperty(crypto, "subtle", { get() {
        throw new TypeError(`crypto.subtle is not available ${SANDBOX}`);
    } });
    define(global, "crypto", crypto);

    // ---- structuredClone ------------------------------------------------------------------
    define(global, "structuredClone", function structuredClone(value) {
        const seen = new Map();
        const clone = (v) => {
            if (v === null || (typeof v !== "object" && typeof v !== "function")) {
                if (typeof v === "symbol") throw new DOMException("a Symbol cannot be cloned", "DataCloneError");
                return v;
            }
            if (typeof v === "function") throw new DOMException("a function cannot be cloned", "DataCloneError");
            if (seen.has(v)) return seen.get(v);
            let out;
            if (v instanceof Date) out = new Date(v.getTime());
            else if (v instanceof RegExp) out = new RegExp(v.source, v.flags);
            else if (v instanceof ArrayBuffer) out = v.slice(0);
            else if (ArrayBuffer.isView(v)) {
                out = new v.constructor(clone(v.buffer), v.byteOffset, v instanceof DataView ? v.byteLength : v.length);
            } else if (v instanceof Map) {
                out = new Map(); seen.set(v, out);
                for (const [k, x] of v) out.set(clone(k), clone(x));
                return out;
            } else if (v instanceof Set) {
                out = new Set(); seen.set(v, out);
                for (const x of v) out.add(clone(x));
                return out;
            } else if (v instanceof Error) {
                out = new (global[v.name] || Error)(v.message);
                if (v.stack !== undefined) define(out, "stack", String(v.stack));
            } else if (v instanceof WeakMap || v instanceof WeakSet || v instanceof Promise) {
                throw new DOMException(`${Object.prototype.toString.call(v)} cannot be cloned`, "DataCloneError");
            } else {
                out = Array.isArray(v) ? new Array(v.length) : {};
                seen.set(v, out);
                for (const k of Object.keys(v)) out[k] = clone(v[k]);
                return out;
            }
            seen.set(v, out);
            return out;
        };
        return clone(value);
    });

    // ---- URL / URLSearchParams ------------------------------------------------------------
    const enc = (s) => encodeURIComponent(s).replace(/%20/g, "+").replace(/[!'()~]/g,
        c => "%" + c.charCodeAt(0).toString(16).toUpperCase());
    const dec = (s) => { try { return decodeURIComponent(s.replace(/\+/g, " ")); } catch { return s; } };
    class URLSearchParams {
        constructor(init = "") {
            define(this, "_list", []);
            define(this, "_url", null);
            if (init instanceof URLSearchParams) this._list = init._list.map(p => [p[0], p[1]]);
            else if (typeof init === "object" && init !== null) {
                const pairs = Symbol.iterator in init ? Array.from(init) : Object.entries(init);
                for (const p of pairs) {
                    if (p.length !== 2) throw new TypeError("URLSearchParams: each pair needs 2 items");
                    this._list.push([String(p[0]), String(p[1])]);
                }
            } else {
                const s = String(init).replace(/^\?/, "");
                for (const part of s.split("&")) if (part) {
                    const i = part.indexOf("=");
                    this._list.push(i < 0 ? [dec(part), ""] : [dec(part.slice(0, i)), dec(part.slice(i + 1))]);
                }
            }
        }
        _update() { if (this._url) this._url._search = this._list.length ? "?" + this.toString() : ""; }
        get size() { return this._list.length; }
        append(k, v) { this._list.push([String(k), String(v)]); this._update(); }
        delete(k) { k = String(k); this._list = this._list.filter(p => p[0] !== k); this._update(); }
        get(k) { const p = this._list.find(p => p[0] === String(k)); return p ? p[1] : null; }
        getAll(k) { return this._list.filter(p => p[0] === String(k)).map(p => p[1]); }
        has(k) { return this._list.some(p => p[0] === String(k)); }
        set(k, v) {
            k = String(k); v = String(v);
            const i = this._list.findIndex(p => p[0] === k);
            if (i < 0) this._list.push([k, v]);
            else { this._list[i][1] = v; this._list = this._list.filter((p, j) => j <= i || p[0] !== k); }
            this._update();
        }
        sort() { this._list.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0)); this._update(); }
        forEach(fn, thisArg) { for (const [k, v] of this._list) fn.call(thisArg, v, k, this); }
        keys() { return this._list.map(p => p[0])[Symbol.iterator](); }
        values() { return this._list.map(p => p[1])[Symbol.iterator](); }
        entries() { return this._list.map(p => [p[0], p[1]])[Symbol.iterator](); }
        [Symbol.iterator]() { return this.entries(); }
        toString() { return this._list.map(p => enc(p[0]) + "=" + enc(p[1])).join("&"); }
    }
    const DEFAULT_PORTS = { "http:": "80", "https:": "443", "ws:": "80", "wss:": "443", "ftp:": "21" };
    const URL_RE = /^([a-zA-Z][a-zA-Z0-9+.-]*:)(?:\/\/(?:([^:@\/?#]*)(?::([^@\/?#]*))?@)?(\[[^\]]*\]|[^:\/?#]*)(?::(\d*))?)?([^?#]*)(\?[^#]*)?(#.*)?$/;
    function normPath(p) {
        const out = [];
        for (const seg of p.split("/").slice(1)) {
            if (seg === "..") out.pop();
            else if (seg !== ".") out.push(seg);
        }
        if (/\/\.\.?$/.test(p)) out.push("");
        return "/" + out.join("/");
    }
    class URL {
        constructor(url, base) {
            url = String(url).trim();
            let m = URL_RE.exec(url);
            if (!m && base !== undefined) {
                const b = new URL(base);
                let path = b.pathname, search = b.search;
                if (url.startsWith("//")) m = URL_RE.exec(b.protocol + url);
                else {
                    const h = url.indexOf("#"), rest = h < 0 ? url : url.slice(0, h);
                    const hash = h < 0 ? "" : url.slice(h);
                    const q = rest.indexOf("?");
                    const p = q < 0 ? rest : rest.slice(0, q);
                    if (q >= 0) search = rest.slice(q); else if (p) search = "";
                    if (p.startsWith("/")) path = p;
                    else if (p) path = path.replace(/[^/]*$/, "") + p;
                    m = URL_RE.exec(`${b.protocol}//${b.username ? b.username + (b.password ? ":" + b.password : "") + "@" : ""}${b.host}${path}${search}${hash}`);
                }
            }
            if (!m) throw new TypeError(`Invalid URL: '${url}'`);
            const special = m[1].toLowerCase() in DEFAULT_PORTS || m[1].toLowerCase() === "file:";
            if (special && m[4] === undefined && m[1].toLowerCase() !== "file:") throw new TypeError(`Invalid URL: '${url}'`);
            define(this, "_protocol", m[1].toLowerCase());
            define(this, "_username", m[2] || "");
            define(this, "_password", m[3] || "");
            define(this, "_hostname", (m[4] || "").toLowerCase());
            if (special && this._protocol !== "file:" && !this._hostname) throw new TypeError(`Invalid URL: '${url}'`);
            const port = m[5] || "";
            define(this, "_port", port === DEFAULT_PORTS[this._protocol] ? "" : port);
            let path = (m[6] || "").replace(/ /g, "%20");
            if (special) path = normPath(path || "/");
            define(this, "_pathname", path);
            define(this, "_search", m[7] && m[7] !== "?" ? m[7].replace(/ /g, "%20") : "");
            define(this, "_hash", m[8] && m[8] !== "#" ? m[8].replace(/ /g, "%20") : "");
            const sp = new URLSearchParams(this._search);
            sp._url = this;
            define(this, "_params", sp);
        }
        static canParse(url, base) { try { new URL(url, base); return true; } catch { return false; } }
        get protocol() { return this._protocol; }
        get username() { return this._username; }
        get password() { return this._password; }
        get hostname() { return this._hostname; }
        set hostname(v) { this._hostname = String(v).toLowerCase(); }
        get port() { return this._port; }
        set port(v) { v = String(v); this._port = v === DEFAULT_PORTS[this._protocol] ? "" : v; }
        get host() { return this._hostname + (this._port ? ":" + this._port : ""); }
        get origin() { return this._protocol in DEFAULT_PORTS ? `${this._protocol}//${this.host}` : "null"; }
        get pathname() { return this._pathname; }
        set pathname(v) { this._pathname = normPath("/" + String(v).replace(/^\//, "")); }
        get search() { return this._search; }
        set search(v) {
            v = String(v);
            this._search = v && v !== "?" ? (v[0] === "?" ? v : "?" + v) : "";
            this._params._list = new URLSearchParams(this._search)._list;
        }
        get searchParams() { return this._params; }
        get hash() { return this._hash; }
        set hash(v) { v = String(v); this._hash = v && v !== "#" ? (v[0] === "#" ? v : "#" + v) : ""; }
        get href() {
            const auth = this._username ? this._username + (this._password ? ":" + this._password : "") + "@" : "";
            const slashes = this._hostname || this._protocol in DEFAULT_PORTS || this._protocol === "file:" ? "//" : "";
            return `${this._protocol}${slashes}${auth}${this.host}${this._pathname}${this._search}${this._hash}`;
        }
        toString() { return this.href; }
        toJSON() { return this.href; }
    }
    define(global, "URL", URL);
    define(global, "URLSearchParams", URLSearchParams);

    // ---- console.table --------------------------------------------------------------------
    const fmt = (v) => typeof v === "string" ? `'${v}'` : v === undefined ? "" : String(v);
    define(global.console, "table", function table(data, columns) {
        if (data === null || typeof data !== "object") return console.log(data);
        const rows = data instanceof Map ? Array.from(data) : Object.entries(data);
        const cols = [], hasValues = { v: false };
        for (const [, r] of rows) {
            if (r !== null && typeof r === "object") {
                for (const k of Object.keys(r)) if (!cols.includes(k)) cols.push(k);
            } else hasValues.v = true;
        }
        const keep = columns ? columns.map(String) : cols;
        const head = ["(index)", ...keep, ...(hasValues.v ? ["Values"] : [])];
        const body = rows.map(([i, r]) => [String(i), ...keep.map(k =>
            r !== null && typeof r === "object" && k in r ? fmt(r[k]) : ""),
        ...(hasValues.v ? [r !== null && typeof r === "object" ? "" : fmt(r)] : [])]);
        const w = head.map((h, j) => Math.max(h.length, ...body.map(r => r[j].length)) + 2);
        const cell = (s, j) => {
            const pad = w[j] - s.length, l = Math.floor(pad / 2);
            return " ".repeat(l) + s + " ".repeat(pad - l);
        };
        const line = (a, b, c) => a + w.map(n => "─".repeat(n)).join(b) + c;
        const out = [line("┌", "┬", "┐"), "│" + head.map(cell).join("│") + "│", line("├", "┼", "┤"),
            ...body.map(r => "│" + r.map(cell).join("│") + "│"), line("└", "┴", "┘")];
        console.log(out.join("\n"));
    });

    // ---- locales: Intl and the toLocale* methods come from the Intl bundle (guests/js/intl/),
    // which js_guest.c evaluates before this prelude.

    // ---- fetch: the host performs the request under the sandbox's network policy ----------
    // sc.fetch(method, url, [[name, value]...], body bytes | null, {redirect, timeout}) is the
    // reserved host operation net.fetch (snapcell/code/egress/fetch.py); it blocks, so fetch()
    // calls it from a job and settles its promise from there.
    {   // a block: the section's names stay its own
        const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
        const headerName = (n) => {
            n = String(n);
            if (!TOKEN.test(n)) throw new TypeError(`Headers: '${n}' is not a valid HTTP header name`);
            return n.toLowerCase();
        };
        const headerValue = (v) => {
            v = String(v).replace(/^[\t\n\r ]+|[\t\n\r ]+$/g, "");
            if (/[\0\r\n]|[^\0-\xff]/.test(v)) throw new TypeError(`Headers: invalid header value '${v}'`);
            return v;
        };
        class Headers {
            constructor(init) {
                define(this, "_list", []);                  // [[lower-case name, value]...]
                if (init === undefined || init === null) return;
                if (init instanceof Headers) { this._list = init._list.map(p => [p[0], p[1]]); return; }
                if (typeof init !== "object") throw new TypeError("Headers: init must be an object or a list of pairs");
                const pairs = Symbol.iterator in init ? Array.from(init, p => Array.from(p)) : Object.entries(init);
                for (const p of pairs) {
                    if (p.length !== 2) throw new TypeError("Headers: each header needs a name and a value");
                    this.append(p[0], p[1]);
                }
            }
            append(n, v) { this._list.push([headerName(n), headerValue(v)]); }
            delete(n) { n = headerName(n); this._list = this._list.filter(p => p[0] !== n); }
            get(n) {
                n = headerName(n);
                const vs = this._list.filter(p => p[0] === n).map(p => p[1]);
                return vs.length ? vs.join(", ") : null;
            }
            getSetCookie() { return this._list.filter(p => p[0] === "set-cookie").map(p => p[1]); }
            has(n) { n = headerName(n); return this._list.some(p => p[0] === n); }
            set(n, v) {
                n = headerName(n); v = headerValue(v);
                const i = this._list.findIndex(p => p[0] === n);
                if (i < 0) this._list.push([n, v]);
                else { this._list[i][1] = v; this._list = this._list.filter((p, j) => j <= i || p[0] !== n); }
            }
            // sorted by name, values of one name combined (set-cookie kept apart), as WHATWG iterates
            entries() {
                const names = [...new Set(this._list.map(p => p[0]))].sort();
                const out = [];
                for (const n of names) {
                    if (n === "set-cookie") for (const v of this.getSetCookie()) out.push([n, v]);
                    else out.push([n, this.get(n)]);
                }
                return out[Symbol.iterator]();
            }
            keys() { return Array.from(this.entries(), p => p[0])[Symbol.iterator](); }
            values() { return Array.from(this.entries(), p => p[1])[Symbol.iterator](); }
            forEach(fn, thisArg) { for (const [n, v] of this.entries()) fn.call(thisArg, v, n, this); }
            [Symbol.iterator]() { return this.entries(); }
            get [Symbol.toStringTag]() { return "Headers"; }
        }

        const utf8 = new TextEncoder(), utf8d = new TextDecoder();
        const bytesText = (b) => {              // ASCII fast path: TextDecoder works byte by byte
            for (let i = 0; i < b.length; i++) if (b[i] > 127) return utf8d.decode(b);
            let s = "";
            for (let i = 0; i < b.length; i += 8192) s += String.fromCharCode.apply(null, b.subarray(i, i + 8192));
            return s;
        };
        // A body and its default Content-Type (WHATWG "extract a body").
        function extractBody(body) {
            if (body === undefined || body === null) return [null, null];
            if (typeof body === "string") return [utf8.encode(body), "text/plain;charset=UTF-8"];
            if (body instanceof URLSearchParams)
                return [utf8.encode(body.toString()), "application/x-www-form-urlencoded;charset=UTF-8"];
            if (body instanceof ArrayBuffer) return [new Uint8Array(body.slice(0)), null];
            if (ArrayBuffer.isView(body))
                return [new Uint8Array(body.buffer.slice(body.byteOffset, body.byteOffset + body.byteLength)), null];
            return [utf8.encode(String(body)), "text/plain;charset=UTF-8"];
        }
        const BodyMixin = (Base) => class extends Base {
            get bodyUsed() { return this._used; }
            _consume() {
                if (this._used) return Promise.reject(new TypeError("Body is unusable: the body has already been read"));
                this._used = this._bytes !== null;
                return Promise.resolve(this._bytes || new Uint8Array(0));
            }
            arrayBuffer() { return this._consume().then(b => b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength)); }
            bytes() { return this._consume().then(b => new Uint8Array(b)); }
            text() { return this._consume().then(bytesText); }
            json() { return this.text().then(JSON.parse); }
        };
        const METHODS = ["DELETE", "GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH"];
        class Request extends BodyMixin(Object) {
            constructor(input, init) {
                super();
                if (init === undefined || init === null) init = {};
                const src = input instanceof Request ? input : null;
                const url = src ? src.url : new URL(String(input)).href;
                let method = init.method !== undefined ? String(init.method) : src ? src.method : "GET";
                if (!TOKEN.test(method)) throw new TypeError(`Request: '${method}' is not a valid HTTP method`);
                if (METHODS.includes(method.toUpperCase())) method = method.toUpperCase();
                if (["CONNECT", "TRACE", "TRACK"].includes(method.toUpperCase()))
                    throw new TypeError(`Request: the method ${method} is not allowed`);
                const headers = new Headers(init.headers !== undefined ? init.headers : src ? src.headers : undefined);
                let bytes = src ? src._bytes : null;
                if (init.body !== undefined && init.body !== null) {
                    const [b, type] = extractBody(init.body);
                    bytes = b;
                    if (type && !headers.has("content-type")) headers.set("content-type", type);
                }
                if (bytes !== null && (method === "GET" || method === "HEAD"))
                    throw new TypeError(`Request with ${method} method cannot have a body`);
                const redirect = init.redirect !== undefined ? String(init.redirect) : src ? src.redirect : "follow";
                if (!["follow", "manual", "error"].includes(redirect))
                    throw new TypeError(`Request: redirect must be 'follow', 'manual' or 'error', got '${redirect}'`);
                define(this, "_used", false);
                define(this, "_bytes", bytes);
                define(this, "url", url);
                define(this, "method", method);
                define(this, "headers", headers);
                define(this, "redirect", redirect);
                define(this, "signal", init.signal !== undefined ? init.signal : src ? src.signal : new AbortSignal());
            }
            clone() {
                if (this._used) throw new TypeError("Request.clone: the body has already been read");
                return new Request(this);
            }
            get [Symbol.toStringTag]() { return "Request"; }
        }
        const REDIRECT_STATUS = [301, 302, 303, 307, 308];
        class Response extends BodyMixin(Object) {
            constructor(body = null, init) {
                super();
                if (init === undefined || init === null) init = {};
                const status = init.status !== undefined ? Number(init.status) : 200;
                if (!(status >= 200 && status <= 599 && Number.isInteger(status)))
                    throw new RangeError(`Response: status ${init.status} is not in the range 200-599`);
                const headers = new Headers(init.headers);
                const [bytes, type] = extractBody(body);
                if (type && !headers.has("content-type")) headers.set("content-type", type);
                define(this, "_used", false);
                define(this, "_bytes", bytes);
                define(this, "status", status);
                define(this, "statusText", init.statusText !== undefined ? String(init.statusText) : "");
                define(this, "headers", headers);
                define(this, "url", "");
                define(this, "redirected", false);
                define(this, "type", "default");
            }
            get ok() { return this.status >= 200 && this.status < 300; }
            clone() {
                if (this._used) throw new TypeError("Response.clone: the body has already been read");
                const r = new Response(null, this);
                r._bytes = this._bytes;
                for (const k of ["url", "redirected", "type"]) r[k] = this[k];
                return r;
            }
            static json(data, init = {}) {
                const headers = new Headers(init.headers);
                if (!headers.has("content-type")) headers.set("content-type", "application/json");
                return new Response(JSON.stringify(data), { ...init, headers });
            }
            static error() {
                const r = new Response(null, { status: 200 });
                r.status = 0; r.type = "error";
                return r;
            }
            static redirect(url, status = 302) {
                if (!REDIRECT_STATUS.includes(status)) throw new RangeError(`Response.redirect: invalid status ${status}`);
                return new Response(null, { status, headers: { location: new URL(String(url)).href } });
            }
            get [Symbol.toStringTag]() { return "Response"; }
        }

        // AbortSignal: abort() before the request starts rejects it; AbortSignal.timeout(ms) bounds
        // the request on the host (it holds no timer, so it never keeps a run waiting).
        class AbortSignal {
            constructor() {
                define(this, "_aborted", false);
                define(this, "_reason", undefined);
                define(this, "_deadline", null);
                define(this, "_listeners", []);
                this.onabort = null;
            }
            get aborted() {
                if (!this._aborted && this._deadline !== null && sc.now() >= this._deadline)
                    this._abort(new DOMException("The operation was aborted due to timeout", "TimeoutError"));
                return this._aborted;
            }
            get reason() { this.aborted; return this._reason; }
            throwIfAborted() { if (this.aborted) throw this._reason; }
            addEventListener(type, fn) { if (type === "abort" && typeof fn === "function") this._listeners.push(fn); }
            removeEventListener(type, fn) { this._listeners = this._listeners.filter(f => f !== fn); }
            _abort(reason) {
                if (this._aborted) return;
                this._aborted = true;
                this._reason = reason === undefined ? new DOMException("This operation was aborted", "AbortError") : reason;
                const ev = { type: "abort", target: this };
                if (typeof this.onabort === "function") this.onabort(ev);
                for (const fn of this._listeners) fn(ev);
            }
            static abort(reason) { const s = new AbortSignal(); s._abort(reason); return s; }
            static timeout(ms) {
                ms = Number(ms);
                if (!(ms >= 0)) throw new TypeError("AbortSignal.timeout: ms must be a non-negative number");
                const s = new AbortSignal(); s._deadline = sc.now() + ms;
                return s;
            }
            static any(signals) {
                const s = new AbortSignal();
                for (const x of signals) {
                    if (x.aborted) { s._abort(x.reason); break; }
                    if (x._deadline !== null) s._deadline = s._deadline === null ? x._deadline : Math.min(s._deadline, x._deadline);
                    x.addEventListener("abort", () => s._abort(x.reason));
                }
                return s;
            }
            get [Symbol.toStringTag]() { return "AbortSignal"; }
        }
        class AbortController {
            constructor() { define(this, "signal", new AbortSignal()); }
            abort(reason) { this.signal._abort(reason); }
        }

        function netError(e, signal) {
            if (signal && signal._deadline !== null && e.name === "TimeoutError" && signal.aborted) return signal.reason;
            const m = String(e.message).replace(/^net\.fetch: /, "");
            return new TypeError(m);
        }
        define(global, "fetch", function fetch(input, init) {
            return new Promise((resolve, reject) => {
                const req = new Request(input, init);
                if (req.signal.aborted) throw req.signal.reason;
                if (req._used) throw new TypeError("fetch: the request's body has already been read");
                queueMicrotask(() => {
                    const signal = req.signal;
                    if (signal.aborted) return reject(signal.reason);
                    const timeout = signal._deadline === null ? null : Math.max(0, signal._deadline - sc.now()) / 1000;
                    let r;
                    try {
                        r = sc.fetch(req.method, req.url, req.headers._list, req._bytes,
                            { redirect: req.redirect, timeout });
                    } catch (e) {
                        return reject(netError(e, signal));
                    }
                    const res = new Response(null, { status: 200, headers: r.headers });
                    res._bytes = r.body;
                    res.status = r.status; res.statusText = r.statusText;
                    res.url = r.url; res.redirected = r.redirected; res.type = "basic";
                    resolve(res);
                });
            });
        });
        define(global, "Headers", Headers);
        define(global, "Request", Request);
        define(global, "Response", Response);
        define(global, "AbortController", AbortController);
        define(global, "AbortSignal", AbortSignal);
    }

    return control;
})
