// Intl.Collator and String.prototype.localeCompare without ICU: UCA-style sort keys (primary,
// secondary, tertiary levels over the NFD form) from collation.json, the weights ICU's CLDR
// collation gives a repertoire of code points in each collation locale (gen_collation.mjs).
// The repertoire: Latin, IPA, Greek, Cyrillic, Armenian, Hebrew, Arabic, Devanagari, Thai,
// Hangul jamo (syllables decompose to them), kana, punctuation, symbols and emoji; Han
// ideographs by code point after all of them (the implicit weights of the root order). A
// character outside it throws RangeError rather than sorting somewhere in silence.
import data from "./collation.json";

const OPTIONS = {
    usage: ["sort"],
    sensitivity: ["base", "accent", "case", "variant"],
    caseFirst: ["upper", "lower", "false"],
    collation: ["default"],
};
const KEYWORDS = { kn: "numeric", kf: "caseFirst", co: "collation" };

function buildTable(t) {
    const keys = t.keys.split("\0"), w = t.weights;
    const map = new Map();
    for (let i = 0; i < keys.length; i++) map.set(keys[i], i * 4);
    return { map, w, variable: new Set(t.variable.split("\0")), hanAfter: t.hanAfter,
        expansions: t.expansions, zero: w[map.get("0")] };
}

const DIGIT_ZEROS = [0x30, 0x660, 0x6f0, 0x966, 0xe50, 0xff10];
function digitValue(cp) {
    for (const z of DIGIT_ZEROS) if (cp >= z && cp <= z + 9) return cp - z;
    return -1;
}

export function makeCollator({ IntlObj, define, canonical, honouredBy, gateLocales, refuse, SANDBOX,
                               collation: collationLocales }) {
    const tables = data.tables.map(buildTable);
    const tableOf = new Map(Object.entries(data.locales));
    const set = new Set(collationLocales);
    const LocaleCtor = IntlObj.Locale;
    const max = new Map(collationLocales.map(t => [new LocaleCtor(t).maximize().baseName, t]));
    const names = `${collationLocales.join(", ")} for collation`;

    // collation elements of a string: [primary, secondary, tertiary, case bit, digits] each
    function elements(str, tb, numeric, ignorePunct, upperFirst) {
        const s = String(str).normalize("NFD");
        const out = [];
        const cps = Array.from(s);
        for (let i = 0; i < cps.length; i++) {
            let c = cps[i];
            const cp = c.codePointAt(0);
            if (numeric && digitValue(cp) >= 0) {
                let digits = "";
                while (i < cps.length && digitValue(cps[i].codePointAt(0)) >= 0)
                    digits += digitValue(cps[i++].codePointAt(0));
                i--;
                out.push([tb.zero, 1, 0, 0, digits.replace(/^0+(?=.)/, "")]);
                continue;
            }
            let at;
            if (i + 1 < cps.length && tb.map.has(c + cps[i + 1])) {     // a contraction
                c += cps[++i];
                at = tb.map.get(c);
            } else {
                at = tb.map.get(c);
            }
            if (at === undefined) {
                if ((cp >= 0x4e00 && cp <= 0x9fff) || (cp >= 0x3400 && cp <= 0x4dbf)) {
                    out.push([tb.hanAfter + cp, 1, 0, 0]);
                    continue;
                }
                if (/^[\p{Cc}\p{Cf}]$/u.test(c)) continue;                 // ignorable
                throw new RangeError(`Intl.Collator: the character '${c}' (U+${cp.toString(16)
                    .toUpperCase().padStart(4, "0")}) has no collation data ${SANDBOX}`);
            }
            if (ignorePunct && tb.variable.has(c)) continue;
            const w = tb.w;
            const upper = c !== c.toLowerCase() ? 1 : 0;
            const tert = upperFirst ? w[at + 3] : w[at + 2];
            const exp = tb.expansions[c];
            if (exp !== undefined) {        // ß = ss; æ = a e with a secondary weight of its own
                for (let k = 0; k < 2; k++) {
                    const xa = tb.map.get(exp[k]);
                    out.push([w[xa], 1, (upperFirst ? w[xa + 3] : w[xa + 2]) + 1 + tert, upper]);
                    if (k === 0 && exp[2] === "*") out.push([0, 5000, 0, 0]);
                }
                continue;
            }
            if (w[at] === 0) out.push([0, 1 + w[at + 1], 0, 0]);           // a combining mark
            else {
                // a letter that differs from its base at the secondary level without decomposing
                // (ø, đ): the base's common weight, then one of its own, as in the DUCET
                out.push([w[at], 1, tert, upper]);
                if (w[at + 1] !== 0) out.push([0, 1000 + w[at + 1], 0, 0]);
            }
        }
        return out;
    }

    function comparePrimary(a, b) {
        let i = 0, j = 0;
        for (;;) {
            while (i < a.length && a[i][0] === 0) i++;
            while (j < b.length && b[j][0] === 0) j++;
            if (i >= a.length || j >= b.length) return (i < a.length) - (j < b.length);
            const x = a[i], y = b[j];
            if (x[0] !== y[0]) return x[0] < y[0] ? -1 : 1;
            if (x[4] !== undefined || y[4] !== undefined) {
                const m = x[4] ?? "0", n = y[4] ?? "0";
                if (m.length !== n.length) return m.length < n.length ? -1 : 1;
                if (m !== n) return m < n ? -1 : 1;
            }
            i++; j++;
        }
    }
    function compareLevel(a, b, k, skipIgnorable) {
        const xs = a.filter(e => (skipIgnorable ? e[0] !== 0 : true) && (k !== 1 || e[1] !== 0));
        const ys = b.filter(e => (skipIgnorable ? e[0] !== 0 : true) && (k !== 1 || e[1] !== 0));
        const n = Math.min(xs.length, ys.length);
        for (let i = 0; i < n; i++)
            if (xs[i][k] !== ys[i][k]) return xs[i][k] < ys[i][k] ? -1 : 1;
        return xs.length === ys.length ? 0 : xs.length < ys.length ? -1 : 1;
    }

    const slots = new WeakMap();
    function getOption(opts, name, allowed, fallback) {
        let v = opts[name];
        if (v === undefined) return fallback;
        v = name === "numeric" || name === "ignorePunctuation" ? Boolean(v) : String(v);
        if (allowed && !allowed.includes(v)) {
            if (name === "sensitivity" || name === "caseFirst" || name === "usage" && v !== "search")
                throw new RangeError(`Intl.Collator: invalid ${name} '${v}'`);
            refuse("Intl.Collator", name, v, `the sandbox's Collator supports ${name} ` +
                allowed.map(x => `'${x}'`).join(", "));
        }
        return v;
    }

    function Collator(locales, options) {
        if (!new.target) return new Collator(locales, options);
        const list = gateLocales(canonical(locales), "Intl.Collator", set, max, names);
        const opts = options === undefined ? {} : Object(options);
        const usage = getOption(opts, "usage", OPTIONS.usage, "sort");
        let locale, tag;
        for (const t of list) {
            const by = honouredBy(t, set, max);
            if (by !== undefined) { locale = t; tag = by; break; }
        }
        if (locale === undefined) { locale = "en-US"; tag = "en"; }
        // -u- keywords (kn, kf, co) unless the options say otherwise
        const ext = {};
        const m = /-u((?:-[a-z0-9]{2,8})+)/.exec(locale);
        if (m) {
            const parts = m[1].slice(1).split("-");
            for (let i = 0; i < parts.length; i++)
                if (parts[i].length === 2) {
                    const key = parts[i], vals = [];
                    while (i + 1 < parts.length && parts[i + 1].length > 2) vals.push(parts[++i]);
                    if (KEYWORDS[key]) ext[KEYWORDS[key]] = vals.join("-") || "true";
                }
        }
        const fromExt = (name) => name === "numeric" ? (ext.numeric === undefined ? undefined
            : ext.numeric === "true") : ext[name];
        const pick = (name) => opts[name] !== undefined ? opts[name] : fromExt(name);
        const numeric = getOption({ numeric: pick("numeric") }, "numeric", null, false);
        const caseFirst = getOption({ caseFirst: pick("caseFirst") }, "caseFirst", OPTIONS.caseFirst, "false");
        const collation = getOption({ collation: pick("collation") }, "collation",
            [...OPTIONS.collation, "standard", "search"], "default");
        if (collation !== "default")
            refuse("Intl.Collator", "collation", collation, "only the default collation ships");
        const sensitivity = getOption(opts, "sensitivity", OPTIONS.sensitivity, "variant");
        const ignorePunctuation = getOption(opts, "ignorePunctuation", null, false);
        const base = new LocaleCtor(locale).baseName;
        slots.set(this, {
            locale: base, usage, sensitivity, ignorePunctuation, collation,
            numeric, caseFirst, table: tables[tableOf.get(tag)], bound: undefined,
        });
    }
    function slot(c, what) {
        const s = slots.get(c);
        if (s === undefined) throw new TypeError(`${what} called on an object that is not an Intl.Collator`);
        return s;
    }
    function compareWith(s, x, y) {
        const upper = s.caseFirst === "upper";
        const a = elements(x, s.table, s.numeric, s.ignorePunctuation, upper);
        const b = elements(y, s.table, s.numeric, s.ignorePunctuation, upper);
        let r = comparePrimary(a, b);
        if (r !== 0 || s.sensitivity === "base") return r;
        if (s.sensitivity === "case") {
            r = compareLevel(a, b, 3, true);
            return upper ? -r : r;
        }
        r = compareLevel(a, b, 1, false);
        if (r !== 0 || s.sensitivity === "accent") return r;
        return compareLevel(a, b, 2, true);
    }
    Object.defineProperty(Collator.prototype, "compare", {
        configurable: true,
        get() {
            const s = slot(this, "Intl.Collator.prototype.compare");
            if (s.bound === undefined)
                s.bound = (x, y) => compareWith(s, String(x), String(y));
            return s.bound;
        },
    });
    define(Collator.prototype, "resolvedOptions", function resolvedOptions() {
        const s = slot(this, "Intl.Collator.prototype.resolvedOptions");
        return { locale: s.locale, usage: s.usage, sensitivity: s.sensitivity,
            ignorePunctuation: s.ignorePunctuation, collation: s.collation, numeric: s.numeric,
            caseFirst: s.caseFirst };
    });
    Object.defineProperty(Collator.prototype, Symbol.toStringTag,
        { value: "Intl.Collator", configurable: true });
    define(Collator, "supportedLocalesOf", function supportedLocalesOf(locales) {
        return canonical(locales).filter(t => honouredBy(t, set, max) !== undefined);
    });
    define(IntlObj, "Collator", Collator);

    const cache = new Map();
    define(String.prototype, "localeCompare", function localeCompare(that, locales, options) {
        if (this === null || this === undefined)
            throw new TypeError("String.prototype.localeCompare called on null or undefined");
        let key;
        try {
            key = JSON.stringify([locales, options === undefined ? null : options]);
        } catch {
            key = undefined;
        }
        let c = key === undefined ? undefined : cache.get(key);
        if (c === undefined) {
            c = new Collator(locales, options);
            if (key !== undefined) {
                if (cache.size >= 64) cache.delete(cache.keys().next().value);
                cache.set(key, c);
            }
        }
        return c.compare(String(this), String(that));
    });
}
