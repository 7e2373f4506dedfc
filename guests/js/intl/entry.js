// The JS guest's Intl (bundled by build.mjs into one script that js_guest.c evaluates while the
// guest initialises, so its cost lands in the warm snapshot): the formatjs polyfills of
// Intl.getCanonicalLocales, Locale, PluralRules, NumberFormat and DateTimeFormat with the CLDR
// data of the locales in locales.json and the IANA zones of formatjs' "golden" set, plus our
// Collator (collator.js). What it cannot honour throws RangeError; it never formats wrongly in
// silence: a locale CLDR knows but the guest does not ship, a calendar other than the Gregorian,
// a numbering system the locale's data lacks, a time zone without data.
import "@formatjs/intl-getcanonicallocales/polyfill-force.js";
import "@formatjs/intl-locale/polyfill-force.js";
import "@formatjs/intl-pluralrules/polyfill-force.js";
import "@formatjs/intl-numberformat/polyfill-force.js";
import "@formatjs/intl-datetimeformat/polyfill-force.js";
import "snapcell:locale-data";
import "@formatjs/intl-datetimeformat/add-golden-tz.js";
import dateData from "snapcell:date-data";
import { shipped, known, defaultLocale, collation } from "snapcell:config";
import { makeCollator } from "./collator.js";

const SANDBOX = "in the snapcell sandbox";
const define = (obj, name, value) => Object.defineProperty(obj, name,
    { value, writable: true, configurable: true, enumerable: false });
const IntlObj = globalThis.Intl;
const NumberFormatBase = IntlObj.NumberFormat;
const DateTimeFormatBase = IntlObj.DateTimeFormat;
const hasTimeZone = (tz) => DateTimeFormatBase[Symbol.for("@formatjs/intl-datetimeformat/hasTimeZone")](tz);

// formatjs' skeleton matcher scores every format of the locale (~1,800, most of them date-time
// combinations) on each new DateTimeFormat, and every object it reads is a page the run writes
// (QuickJS reference counts). While the sandbox's DateTimeFormat constructor runs, the formats
// offered are those with exactly the requested fields (all of them if none has): the same best
// match (tests/code/test_js_intl.py checks it against the unpruned matcher, which setting
// Intl.DateTimeFormat[Symbol.for("snapcell.intl.allFormats")] = true restores).
const FIELDS = ["weekday", "era", "year", "month", "day", "dayPeriod", "hour", "minute", "second",
                "fractionalSecondDigits", "timeZoneName"];
let requested;          // the field-set key of the DateTimeFormat being built, if any
const ALL_FORMATS = Symbol.for("snapcell.intl.allFormats");
function requestKey(options) {
    const o = options === undefined || options === null ? {} : Object(options);
    // styles do not match skeletons; a dayPeriod is often best dropped (24-hour locales)
    if (o.dateStyle !== undefined || o.timeStyle !== undefined || o.dayPeriod !== undefined)
        return undefined;
    const present = FIELDS.filter(f => o[f] !== undefined);
    const dateOrTime = present.filter(f => f !== "era" && f !== "timeZoneName");
    return (dateOrTime.length ? present : ["year", "month", "day", ...present]).sort().join(",");
}
function prunedFormats(all) {
    const byKey = new Map();
    for (const f of all) {
        const key = FIELDS.filter(k => f[k] !== undefined).sort().join(",");
        if (!byKey.has(key)) byKey.set(key, []);
        byKey.get(key).push(f);
    }
    const offered = () => (requested !== undefined && !IntlObj.DateTimeFormat[ALL_FORMATS] &&
        byKey.get(requested)) || all;
    return { get gregory() { return offered(); }, get iso8601() { return offered(); } };
}

// The date data of each locale with its skeletons already parsed (build.mjs, precompute.cjs).
for (const [, raw, gregory] of dateData) {
    const data = JSON.parse(raw);
    DateTimeFormatBase.__addLocaleData(data);
    const [keys, values, records] = JSON.parse(gregory);
    const none = Object.freeze(Object.create(null));   // no interval formats (formatRange refuses)
    const parsed = records.map((r) => {
        const f = {};
        for (let i = 0; i < r.length; i += 2) f[keys[r[i]]] = values[r[i + 1]];
        f.rangePatterns = none;
        f.rangePatterns12 = none;
        return f;
    });
    DateTimeFormatBase.localeData[data.locale].formats = prunedFormats(parsed);
}
// V8 (so node and browsers) prints U+202F NARROW NO-BREAK SPACE in dates as a plain space
// ("12:00 AM", "1970 г."); so does the sandbox, for code written against them.
const fmtDesc = Object.getOwnPropertyDescriptor(DateTimeFormatBase.prototype, "format");
const plainSpace = (s) => s.replace(/\u202f/g, " ");
const boundFormats = new WeakMap();
Object.defineProperty(DateTimeFormatBase.prototype, "format", {
    configurable: true,
    get() {
        let f = boundFormats.get(this);
        if (f === undefined) {
            const inner = fmtDesc.get.call(this);
            f = (date) => plainSpace(inner(date));
            boundFormats.set(this, f);
        }
        return f;
    },
});
const toParts = DateTimeFormatBase.prototype.formatToParts;
define(DateTimeFormatBase.prototype, "formatToParts", function formatToParts(date) {
    const parts = toParts.call(this, date);
    for (const p of parts) p.value = plainSpace(p.value);
    return parts;
});
// Interval formats are not bundled (they would triple the date data): formatRange refuses.
for (const m of ["formatRange", "formatRangeToParts"])
    define(DateTimeFormatBase.prototype, m, {
        [m]() {
            throw new RangeError(`Intl.DateTimeFormat.prototype.${m} is not available ${SANDBOX}: ` +
                `format the two dates and join them yourself`);
        },
    }[m]);
const canonical = IntlObj.getCanonicalLocales;
const LocaleCtor = IntlObj.Locale;
const knownTags = new Set(known);
const knownLanguages = new Set(known.map(t => t.split("-")[0]));
const shippedSet = new Set(shipped);
const maximized = new Map(shipped.map(t => [new LocaleCtor(t).maximize().baseName, t]));
const SHIPPED_LIST = shipped.join(", ");

// The shipped locale a requested tag (canonical, extensions dropped) is formatted with, or
// undefined. A tag CLDR has data of its own for (de-CH, es-MX, ar-EG, zh-Hant) is honoured only if
// shipped itself; any other tag by the shipped locale it maximises to like (de-DE as de, zh-CN as
// zh); zh-TW maximises to zh-Hant-TW, which no shipped locale does.
function honouredBy(tag, set = shippedSet, max = maximized) {
    const base = new LocaleCtor(tag).baseName;
    if (set.has(base)) return base;
    if (knownTags.has(base)) return undefined;
    return max.get(new LocaleCtor(base).maximize().baseName);
}

// The spec's lookup walks the requested list and takes the first locale with data, else the
// default. The sandbox does the same, except that a list naming only real locales it lacks
// (sv, de-CH) throws instead of falling back to the default; an unknown tag (xx) is skipped as
// the spec says.
function gateLocales(list, what, set, max, names) {
    let real;
    for (const tag of list) {
        if (honouredBy(tag, set, max) !== undefined) return list;
        if (real === undefined && knownLanguages.has(tag.split("-")[0])) real = tag;
    }
    if (real !== undefined)
        throw new RangeError(`${what}: the locale '${real}' is not available ${SANDBOX}; ` +
            `it has ${names}`);
    return list;
}

let gateWhat = "Intl";
// Every formatjs polyfill canonicalises its locales through this provider: the gate for all of
// them, the toLocale* methods included.
define(IntlObj, Symbol.for("@formatjs/intlCanonicalizeLocaleList"), function (locales) {
    return gateLocales(canonical(locales), gateWhat, shippedSet, maximized, SHIPPED_LIST);
});

// -u- extension keywords of a canonical list, e.g. {ca: "japanese"}
function extensions(list) {
    const out = {};
    for (const tag of list) {
        const m = /-u((?:-[a-z0-9]{2,8})+)/.exec(tag.replace(/-x-.*$/, ""));
        if (!m) continue;
        const parts = m[1].slice(1).split("-");
        for (let i = 0; i < parts.length; i++)
            if (parts[i].length === 2) {
                const key = parts[i], vals = [];
                while (i + 1 < parts.length && parts[i + 1].length > 2) vals.push(parts[++i]);
                if (!(key in out)) out[key] = vals.join("-") || "true";
            }
        break;      // only the locale the lookup settles on matters; the first honoured one
    }
    return out;
}

function refuse(what, option, value, why) {
    throw new RangeError(`${what}: ${option} '${value}' is not available ${SANDBOX}: ${why}`);
}

// Options (and -u- keywords) the data cannot honour: the spec would silently ignore them.
function checkOptions(locales, options, what) {
    let list = canonical(locales);
    list = list.filter(t => honouredBy(t) !== undefined);
    const ext = extensions(list);
    const opt = options === undefined || options === null ? {} : Object(options);
    const calendar = opt.calendar !== undefined ? String(opt.calendar) : ext.ca;
    if (calendar !== undefined && calendar !== "gregory")
        refuse(what, "calendar", calendar, "only the Gregorian calendar ships ('gregory')");
    if (opt.timeZone !== undefined && !hasTimeZone(String(opt.timeZone)))
        refuse(what, "timeZone", String(opt.timeZone), "the sandbox has UTC, Etc/GMT±N and the " +
            "IANA zones of formatjs' tz data (America/New_York, Europe/Berlin, Asia/Tokyo, ...)");
    const nu = opt.numberingSystem !== undefined ? String(opt.numberingSystem) : ext.nu;
    if (nu !== undefined && nu !== "latn") {
        const locale = list.length ? honouredBy(list[0]) : "en";
        const data = NumberFormatBase.localeData[locale];
        const systems = data && data.numbers && data.numbers.nu;
        if (!Array.isArray(systems) || !systems.includes(nu))
            refuse(what, "numberingSystem", nu,
                `the data of '${locale}' has ${Array.isArray(systems) ? systems.join(", ") : "latn"}`);
    }
}

function gated(what, fn) {
    return function (...args) {
        const saved = gateWhat;
        gateWhat = what;
        try {
            return fn.apply(this, args);
        } finally {
            gateWhat = saved;
        }
    };
}

// Wrap a constructor so that its option check runs first; `new` and plain calls both work and
// instances keep the polyfill's prototype.
function wrapConstructor(name, Base, optionsAt = 1) {
    const what = `Intl.${name}`;
    function Ctor(...args) {
        checkOptions(args[0], args[optionsAt], what);
        const saved = requested;
        requested = Base === DateTimeFormatBase ? requestKey(args[optionsAt]) : undefined;
        try {
            return gated(what, () => new.target ? Reflect.construct(Base, args, new.target)
                : Base(...args))();
        } finally {
            requested = saved;
        }
    }
    Object.defineProperty(Ctor, "name", { value: name });
    Object.defineProperty(Ctor, "length", { value: 0 });
    Object.defineProperty(Ctor, "prototype", { value: Base.prototype, writable: false });
    define(Base.prototype, "constructor", Ctor);
    define(Ctor, "supportedLocalesOf", function supportedLocalesOf(locales) {
        return canonical(locales).filter(t => honouredBy(t) !== undefined);
    });
    define(IntlObj, name, Ctor);
    return Ctor;
}

const bases = [IntlObj.NumberFormat, IntlObj.DateTimeFormat, IntlObj.PluralRules];
wrapConstructor("NumberFormat", IntlObj.NumberFormat);
wrapConstructor("DateTimeFormat", IntlObj.DateTimeFormat);
wrapConstructor("PluralRules", IntlObj.PluralRules);

// The toLocale* methods: the same checks, named for the method. Date's build a DateTimeFormat
// with the spec's ToDateTimeOptions defaults and keep it for the same arguments (building one
// takes QuickJS ~20 ms: formatjs matches ~1,800 skeletons).
function wrapMethod(proto, name, label) {
    const orig = proto[name];
    const what = `${label}.prototype.${name}`;
    define(proto, name, {
        [name](locales, options) {
            checkOptions(locales, options, what);
            return gated(what, orig).call(this, locales, options);
        },
    }[name]);
}
wrapMethod(Number.prototype, "toLocaleString", "Number");
wrapMethod(BigInt.prototype, "toLocaleString", "BigInt");

const DATE_FIELDS = ["weekday", "year", "month", "day"];
const TIME_FIELDS = ["dayPeriod", "hour", "minute", "second", "fractionalSecondDigits"];
const dateMethods = {
    toLocaleString: ["any", "all"], toLocaleDateString: ["date", "date"],
    toLocaleTimeString: ["time", "time"],
};
const formatters = new Map();
const getTime = Date.prototype.getTime;
for (const [name, [required, defaults]] of Object.entries(dateMethods)) {
    const what = `Date.prototype.${name}`;
    define(Date.prototype, name, {
        [name](locales, options) {
            const t = getTime.call(this);
            let key;
            try {
                key = JSON.stringify([name, locales, options === undefined ? null : options]);
            } catch {
                key = undefined;
            }
            let f = key === undefined ? undefined : formatters.get(key);
            if (f === undefined) {
                checkOptions(locales, options, what);
                const opts = options === undefined ? {} : Object.assign({}, ToObject(options));
                const need = (fields) => fields.every(k => opts[k] === undefined);
                const styled = opts.dateStyle !== undefined || opts.timeStyle !== undefined;
                let fill = !styled;
                if (required === "date" || required === "any") fill = fill && need(DATE_FIELDS);
                if (required === "time" || required === "any") fill = fill && need(TIME_FIELDS);
                if (required === "date" && opts.timeStyle !== undefined)
                    throw new TypeError(`${what}: timeStyle is not allowed`);
                if (required === "time" && opts.dateStyle !== undefined)
                    throw new TypeError(`${what}: dateStyle is not allowed`);
                if (fill && (defaults === "date" || defaults === "all"))
                    opts.year = opts.month = opts.day = "numeric";
                if (fill && (defaults === "time" || defaults === "all"))
                    opts.hour = opts.minute = opts.second = "numeric";
                f = gated(what, () => new IntlObj.DateTimeFormat(locales, opts))();
                if (key !== undefined) {
                    if (formatters.size >= 64) formatters.delete(formatters.keys().next().value);
                    formatters.set(key, f);
                }
            }
            return isNaN(t) ? "Invalid Date" : f.format(t);
        },
    }[name]);
}
function ToObject(x) {
    if (x === null) throw new TypeError("options must be an object");
    return Object(x);
}

// The default locale (the spec's DefaultLocale) for every formatter.
for (const Base of bases) Base.__defaultLocale = defaultLocale;

// ---- Collator and the string methods ------------------------------------------------------
makeCollator({ IntlObj, define, canonical, honouredBy, gateLocales, refuse, SANDBOX, collation });

// toLocaleUpperCase/LowerCase: only tr, az and lt have their own case mappings in Unicode's
// SpecialCasing; the sandbox has none of them, so those throw, others map as the root does.
for (const m of ["toLocaleUpperCase", "toLocaleLowerCase"]) {
    const plain = m === "toLocaleUpperCase" ? String.prototype.toUpperCase : String.prototype.toLowerCase;
    define(String.prototype, m, {
        [m](locales) {
            const list = canonical(locales);
            const lang = list.length ? list[0].split("-")[0] : "en";
            if (lang === "tr" || lang === "az" || lang === "lt")
                throw new RangeError(`String.prototype.${m}: the case mapping of '${list[0]}' is ` +
                    `not available ${SANDBOX}`);
            return plain.call(this);
        },
    }[m]);
}

// The constructors the guest does not ship.
for (const name of ["RelativeTimeFormat", "ListFormat", "DisplayNames", "Segmenter",
                    "DurationFormat"]) {
    const ctor = function () {
        throw new RangeError(`Intl.${name} is not available ${SANDBOX}: it ships NumberFormat, ` +
            `DateTimeFormat, PluralRules, Collator and Locale`);
    };
    Object.defineProperty(ctor, "name", { value: name });
    define(IntlObj, name, ctor);
}

// Warm up: every locale's formatters once, so their lazily built state is in the warm snapshot
// and the first Intl call of a run does not pay for it.
for (const tag of shipped) {
    new IntlObj.NumberFormat(tag, { style: "currency", currency: "EUR" }).format(1234.5);
    new IntlObj.NumberFormat(tag, { notation: "compact" }).format(1234.5);
    new IntlObj.PluralRules(tag).select(1);
    new IntlObj.DateTimeFormat(tag, { timeZone: "UTC", dateStyle: "medium", timeStyle: "short" }).format(0);
    new Date(0).toLocaleString(tag);
}
