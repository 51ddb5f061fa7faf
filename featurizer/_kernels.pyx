# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Featurizer kernels: per-slice trade and order-book statistics as mergeable state.

Data flow: collector batches (live, from the ZMQ bus) or lake columns (backfill)
-> ``Engine`` (one per exchange) -> closed base-interval slices -> ``merge_runs``
rolls them up into longer intervals. Everything here is event-time: a slice
``[start, start + width)`` closes once the exchange's watermark (newest event
time seen) reaches ``start + width + lateness``; a record that arrives for a
closed slice is late and counted, never silently dropped.

Trades are computed in exchange order, not arrival order: an open slice keeps
its trades and, when it closes, runs them sorted by (event time, trade id,
arrival). Open, close and realized variance are then the same whatever order
the trades came in (Coinbase lists a message's trades newest first; two
connections interleave), and live equals backfill bit for bit.

State is mergeable: counts, min/max, first/last, and sums kept as double-double
pairs (``x`` + ``x_c``), with products of the time-weighted integrals split
exactly (fma), so merging consecutive slices gives the slice computed directly
over the same records, to the last bit in practice.
"""

import numpy as np

cimport numpy as cnp
from libc.math cimport NAN, fma, isnan, llrint, log
from libc.stdint cimport INT64_MAX, int64_t, uint8_t
from libc.stdlib cimport calloc, free, malloc, qsort, realloc
from libc.string cimport memcpy, memmove, memset

cimport openmp
from cython.parallel cimport prange

cnp.import_array()

MIN_ROWS_PER_THREAD = 100_000  # below this, one thread: starting more costs more than it saves
CHUNKS_PER_THREAD = 16  # small chunks handed out on demand: a thread slowed by other load takes fewer

cdef double BPS = 1e4  # basis points per unit

cdef struct Slice:
    int64_t start
    int64_t n_trades
    double open
    double high
    double low
    double close
    double volume
    double volume_c
    double buy_volume
    double buy_volume_c
    double notional
    double notional_c
    double rv
    double rv_c
    int64_t first_ts
    int64_t last_ts
    int64_t n_updates
    int64_t book_ns
    double mid_int
    double mid_int_c
    int64_t n_samples
    double spread_sum
    double spread_sum_c
    double spread_max
    double imb_sum
    double imb_sum_c
    double microprice
    double depth_bid
    double depth_ask

# One numpy record per slice; field order and widths mirror ``Slice`` exactly.
_I8 = ("start", "n_trades", "first_ts", "last_ts", "n_updates", "book_ns", "n_samples")
SLICE_FIELDS = (
    "start", "n_trades", "open", "high", "low", "close", "volume", "volume_c", "buy_volume", "buy_volume_c",
    "notional", "notional_c", "rv", "rv_c", "first_ts", "last_ts", "n_updates",
    "book_ns", "mid_int", "mid_int_c", "n_samples", "spread_sum", "spread_sum_c", "spread_max", "imb_sum",
    "imb_sum_c", "microprice", "depth_bid", "depth_ask",
)
SLICE_DTYPE = np.dtype([(name, np.int64 if name in _I8 else np.float64) for name in SLICE_FIELDS])
if SLICE_DTYPE.itemsize != sizeof(Slice):
    raise ImportError("featurizer._kernels: SLICE_DTYPE does not match the C Slice struct")


# -- double-double sums (why: merged and direct slices must agree to the last bit) ------------

cdef inline void dd_add(double* hi, double* lo, double x) noexcept nogil:
    cdef double s = hi[0] + x
    cdef double bp = s - hi[0]
    lo[0] += (hi[0] - (s - bp)) + (x - bp)
    hi[0] = s


cdef inline void dd_add_product(double* hi, double* lo, double a, double b) noexcept nogil:
    cdef double p = a * b
    dd_add(hi, lo, p)
    lo[0] += fma(a, b, -p)


cdef inline void dd_merge(double* hi, double* lo, double b_hi, double b_lo) noexcept nogil:
    dd_add(hi, lo, b_hi)
    lo[0] += b_lo


# -- one slice -----------------------------------------------------------------------------------

cdef inline void slice_init(Slice* s, int64_t start) noexcept nogil:
    memset(s, 0, sizeof(Slice))
    s.start = start
    s.open = NAN
    s.high = NAN
    s.low = NAN
    s.close = NAN
    s.spread_max = NAN
    s.microprice = NAN
    s.depth_bid = NAN
    s.depth_ask = NAN


# -- the trades of one slice: the hot loop, in C for its SIMD vectors -----------------------------
#
# Why C: Cython has no vector types. With GCC/Clang vector extensions (lane-wise IEEE operations)
# one trade's four double-double sums advance together (one 4-lane vector with AVX2, else two
# 2-lane ones), and the log-return series runs for several trades at once in a pass of its own, so
# its long chain of dependent operations no longer stalls the sums. Each lane does exactly the
# scalar operations in the scalar order (x86-64 builds enable no FMA, so nothing is contracted):
# the slices are bit-identical to a one-trade-at-a-time loop, whichever width runs. Batch kernel
# and streaming engine both run every slice through this one code (``trade_run``).

cdef extern from *:
    """
    #define FK_SERIES_MAX_RETURN 1e-3  /* below this |p/c - 1| the series is exact to double precision */
    #define FK_BLOCK 256  /* trades whose terms are computed ahead of the sums: 8 KiB, in L1 */

    /* log(1 + d) as d - d^2/2 + ... - d^8/8 (the first omitted term is below 1e-27 relative); a macro so the
       scalar and the vector code are the same operations in the same order */
    #define FK_LOG1P_SERIES(d) ((d) * (1.0 - (d) * (0.5 - (d) * (1.0 / 3 - (d) * (0.25 - (d) * (0.2 - (d) \\
        * (1.0 / 6 - (d) * (1.0 / 7 - (d) * 0.125))))))))

    typedef double fk_f64x2 __attribute__((vector_size(16)));
    typedef long long fk_i64x2 __attribute__((vector_size(16)));

    /* log(p / c): the series for the small moves between trades (libm's log would be the costliest step).
       Deterministic, so the direct and the merged slice use the same value. */
    static inline double fk_log_ratio(double p, double c) {
        double d = (p - c) / c;
        if (d > FK_SERIES_MAX_RETURN || d < -FK_SERIES_MAX_RETURN) return log(p / c);
        return FK_LOG1P_SERIES(d);
    }

    /* A trade's realized-variance term after a trade at price c (none when the price did not move). */
    static inline double fk_rv_term(double p, double c) {
        double r;
        if (p == c) return 0.0;  /* adding 0.0 to a non-negative double-double sum leaves it as it is */
        r = fk_log_ratio(p, c);
        return r * r;
    }

    /* Running trade state of one slice: sums and their errors in lanes (volume, notional, buy volume, rv). */
    typedef struct { double high, low, close; double sum[4], err[4]; } fk_trade_state;

    static inline void fk_dd_add2(fk_f64x2* hi, fk_f64x2* lo, fk_f64x2 x) {  /* TwoSum, lane-wise */
        fk_f64x2 s = *hi + x;
        fk_f64x2 bp = s - *hi;
        *lo += (*hi - (s - bp)) + (x - bp);
        *hi = s;
    }

    /* The summands of trades [0, m): a[i] = (q, p q), b[i] = (q buy, rv term); prev is the price before P[0]. */
    static void fk_trade_terms(const double* P, const double* Q, const uint8_t* B, double prev, Py_ssize_t m,
                               fk_f64x2* a, fk_f64x2* b) {
        const fk_f64x2 lim = {FK_SERIES_MAX_RETURN, FK_SERIES_MAX_RETURN};
        fk_i64x2 outside = {0, 0};  /* any return beyond the series' range (or NaN): the exact path below */
        fk_f64x2 p, c, q, buy, d, r, pq, qb;
        Py_ssize_t i = 0;
        double last = prev, ds, rs;
        for (; i + 2 <= m; i += 2) {
            p = (fk_f64x2){P[i], P[i + 1]};
            c = (fk_f64x2){last, P[i]};
            q = (fk_f64x2){Q[i], Q[i + 1]};
            buy = (fk_f64x2){(double)B[i], (double)B[i + 1]};
            last = P[i + 1];
            d = (p - c) / c;
            outside |= ~((d >= -lim) & (d <= lim));
            r = FK_LOG1P_SERIES(d);
            r = r * r;
            pq = p * q;
            qb = q * buy;
            a[i] = (fk_f64x2){q[0], pq[0]};
            a[i + 1] = (fk_f64x2){q[1], pq[1]};
            b[i] = (fk_f64x2){qb[0], r[0]};
            b[i + 1] = (fk_f64x2){qb[1], r[1]};
        }
        if (i < m) {
            ds = (P[i] - last) / last;
            outside[0] |= !(ds >= -FK_SERIES_MAX_RETURN && ds <= FK_SERIES_MAX_RETURN);
            rs = FK_LOG1P_SERIES(ds);
            a[i] = (fk_f64x2){Q[i], P[i] * Q[i]};
            b[i] = (fk_f64x2){Q[i] * (double)B[i], rs * rs};
        }
        if (outside[0] | outside[1]) {
            for (i = 0; i < m; i++) b[i][1] = fk_rv_term(P[i], i ? P[i - 1] : prev);
        }
    }

    /* n trades of one slice, after those already in st, in their order (2-lane vectors: any x86-64 or ARM). */
    static void fk_trade_run2(fk_trade_state* st, const double* P, const double* Q, const uint8_t* B,
                              Py_ssize_t n) {
        fk_f64x2 a[FK_BLOCK], b[FK_BLOCK];
        fk_f64x2 s0 = {st->sum[0], st->sum[1]}, s1 = {st->sum[2], st->sum[3]};
        fk_f64x2 e0 = {st->err[0], st->err[1]}, e1 = {st->err[2], st->err[3]};
        double high = st->high, low = st->low, prev = st->close, p;
        Py_ssize_t start, m, i;
        for (start = 0; start < n; start += FK_BLOCK) {
            m = n - start < FK_BLOCK ? n - start : FK_BLOCK;
            fk_trade_terms(P + start, Q + start, B + start, prev, m, a, b);
            for (i = 0; i < m; i++) {
                p = P[start + i];
                high = p > high ? p : high;
                low = p < low ? p : low;
                fk_dd_add2(&s0, &e0, a[i]);
                fk_dd_add2(&s1, &e1, b[i]);
            }
            prev = P[start + m - 1];
        }
        st->high = high;
        st->low = low;
        st->close = prev;
        st->sum[0] = s0[0]; st->sum[1] = s0[1]; st->sum[2] = s1[0]; st->sum[3] = s1[1];
        st->err[0] = e0[0]; st->err[1] = e0[1]; st->err[2] = e1[0]; st->err[3] = e1[1];
    }

    #if defined(__GNUC__) && defined(__x86_64__)
    /* The same with 4-lane vectors where the CPU has AVX2 (chosen at import): all four sums in one vector,
       four trades' terms at once. AVX2 brings no FMA, so the lanes still do exactly the scalar operations. */
    #define FK_AVX2 __attribute__((target("avx2")))
    typedef double fk_f64x4 __attribute__((vector_size(32)));
    typedef long long fk_i64x4 __attribute__((vector_size(32)));

    FK_AVX2 static inline void fk_dd_add4(fk_f64x4* hi, fk_f64x4* lo, fk_f64x4 x) {
        fk_f64x4 s = *hi + x;
        fk_f64x4 bp = s - *hi;
        *lo += (*hi - (s - bp)) + (x - bp);
        *hi = s;
    }

    #ifdef __clang__
    #define FK_SHUFFLE(a, b, ...) __builtin_shufflevector(a, b, __VA_ARGS__)
    #else
    #define FK_SHUFFLE(a, b, ...) __builtin_shuffle(a, b, (fk_i64x4){__VA_ARGS__})
    #endif
    typedef uint8_t fk_u8x4 __attribute__((vector_size(4)));

    /* t[i] = (q, p q, q buy, rv term) of trades [0, m); prev is the price before P[0]. */
    FK_AVX2 static void fk_trade_terms4(const double* P, const double* Q, const uint8_t* B, double prev,
                                        Py_ssize_t m, fk_f64x4* t) {
        const fk_f64x4 lim = {FK_SERIES_MAX_RETURN, FK_SERIES_MAX_RETURN, FK_SERIES_MAX_RETURN,
                              FK_SERIES_MAX_RETURN};
        fk_i64x4 outside = {0, 0, 0, 0};
        fk_f64x4 p, c, q, buy, d, r, pq, qb, lo_a, hi_a, lo_b, hi_b;
        fk_u8x4 b4;
        Py_ssize_t i = 0;
        double last, ds, rs;
        long long tail = 0;
        for (; i + 4 <= m; i += 4) {
            memcpy(&p, P + i, sizeof p);
            if (i) memcpy(&c, P + i - 1, sizeof c);
            else c = (fk_f64x4){prev, P[0], P[1], P[2]};
            memcpy(&q, Q + i, sizeof q);
            memcpy(&b4, B + i, sizeof b4);
            buy = __builtin_convertvector(b4, fk_f64x4);
            d = (p - c) / c;
            outside |= ~((d >= -lim) & (d <= lim));
            r = FK_LOG1P_SERIES(d);
            r = r * r;
            pq = p * q;
            qb = q * buy;
            /* rows (q, pq, qb, r) of four trades into one (q, pq, qb, r) vector per trade: a 4x4 transpose */
            lo_a = FK_SHUFFLE(q, pq, 0, 4, 2, 6);
            hi_a = FK_SHUFFLE(q, pq, 1, 5, 3, 7);
            lo_b = FK_SHUFFLE(qb, r, 0, 4, 2, 6);
            hi_b = FK_SHUFFLE(qb, r, 1, 5, 3, 7);
            t[i] = FK_SHUFFLE(lo_a, lo_b, 0, 1, 4, 5);
            t[i + 1] = FK_SHUFFLE(hi_a, hi_b, 0, 1, 4, 5);
            t[i + 2] = FK_SHUFFLE(lo_a, lo_b, 2, 3, 6, 7);
            t[i + 3] = FK_SHUFFLE(hi_a, hi_b, 2, 3, 6, 7);
        }
        last = i ? P[i - 1] : prev;
        for (; i < m; i++) {
            ds = (P[i] - last) / last;
            tail |= !(ds >= -FK_SERIES_MAX_RETURN && ds <= FK_SERIES_MAX_RETURN);
            rs = FK_LOG1P_SERIES(ds);
            t[i] = (fk_f64x4){Q[i], P[i] * Q[i], Q[i] * (double)B[i], rs * rs};
            last = P[i];
        }
        if (tail | outside[0] | outside[1] | outside[2] | outside[3]) {
            for (i = 0; i < m; i++) t[i][3] = fk_rv_term(P[i], i ? P[i - 1] : prev);
        }
    }

    FK_AVX2 static void fk_trade_run4(fk_trade_state* st, const double* P, const double* Q, const uint8_t* B,
                                      Py_ssize_t n) {
        fk_f64x4 t[FK_BLOCK];
        fk_f64x4 s = {st->sum[0], st->sum[1], st->sum[2], st->sum[3]};
        fk_f64x4 e = {st->err[0], st->err[1], st->err[2], st->err[3]};
        double high = st->high, low = st->low, prev = st->close, p;
        Py_ssize_t start, m, i;
        for (start = 0; start < n; start += FK_BLOCK) {
            m = n - start < FK_BLOCK ? n - start : FK_BLOCK;
            fk_trade_terms4(P + start, Q + start, B + start, prev, m, t);
            for (i = 0; i < m; i++) {
                p = P[start + i];
                high = p > high ? p : high;
                low = p < low ? p : low;
                fk_dd_add4(&s, &e, t[i]);
            }
            prev = P[start + m - 1];
        }
        st->high = high;
        st->low = low;
        st->close = prev;
        for (i = 0; i < 4; i++) {
            st->sum[i] = s[i];
            st->err[i] = e[i];
        }
    }

    static int fk_vector_width = 2;  /* set once at import (fk_detect_vector_width), before any thread starts */
    static int fk_detect_vector_width(void) {
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx2") ? 4 : 2;
    }
    #else
    static int fk_vector_width = 2;
    static int fk_detect_vector_width(void) { return 2; }
    #endif

    static void fk_trade_run(fk_trade_state* st, const double* P, const double* Q, const uint8_t* B,
                             Py_ssize_t n) {
    #if defined(__GNUC__) && defined(__x86_64__)
        if (fk_vector_width == 4) {
            fk_trade_run4(st, P, Q, B, n);
            return;
        }
    #endif
        fk_trade_run2(st, P, Q, B, n);
    }
    """
    ctypedef struct TradeState "fk_trade_state":
        double high, low, close
        double sum[4]
        double err[4]
    double log_ratio "fk_log_ratio"(double p, double c) noexcept nogil
    double rv_term "fk_rv_term"(double p, double c) noexcept nogil
    void trade_state_run "fk_trade_run"(TradeState* st, const double* price, const double* amount,
                                        const uint8_t* is_buy, Py_ssize_t n) noexcept nogil
    int vector_width "fk_vector_width"
    int detect_vector_width "fk_detect_vector_width"() noexcept nogil

vector_width = detect_vector_width()


def _use_vector_width(int width):
    """Run the trade kernel with 2- or 4-lane vectors (4 needs AVX2); returns the width before. For tests: the
    two give bit-identical slices. Not thread-safe: call it while no kernel runs."""
    global vector_width
    if width not in (2, 4) or (width == 4 and detect_vector_width() != 4):
        raise ValueError(f"_use_vector_width: {width} lanes not available here")
    before = vector_width
    vector_width = width
    return before


cdef inline void trade_add(Slice* s, int64_t ts, double p, double q, bint buy) noexcept nogil:
    if s.n_trades == 0:
        s.open = p
        s.high = p
        s.low = p
        s.first_ts = ts
        s.last_ts = ts
    else:
        if p > s.high:
            s.high = p
        if p < s.low:
            s.low = p
        if p != s.close:
            dd_add(&s.rv, &s.rv_c, rv_term(p, s.close))
        if ts < s.first_ts:
            s.first_ts = ts
        if ts > s.last_ts:
            s.last_ts = ts
    s.close = p
    s.n_trades += 1
    dd_add(&s.volume, &s.volume_c, q)
    dd_add(&s.notional, &s.notional_c, p * q)
    # branch-free: taker sides are a coin flip to the branch predictor; adding 0.0 leaves the sum as is.
    # Sell volume is volume - buy volume (features.values), one sum fewer per trade.
    dd_add(&s.buy_volume, &s.buy_volume_c, q * <double>buy)


cdef void trade_run(Slice* s, const int64_t* ts, const double* price, const double* amount,
                    const uint8_t* is_buy, Py_ssize_t n) noexcept nogil:
    """``trade_add`` over n >= 1 trades of one slice sorted by event time (the same operations in the same
    order, so the result is bit-identical), the sums in ``fk_trade_run``'s vectors."""
    cdef TradeState st
    if s.n_trades == 0:
        trade_add(s, ts[0], price[0], amount[0], is_buy[0])
        if n == 1:
            return
        ts, price, amount, is_buy, n = ts + 1, price + 1, amount + 1, is_buy + 1, n - 1
    st.high, st.low, st.close = s.high, s.low, s.close
    st.sum[0], st.sum[1], st.sum[2], st.sum[3] = s.volume, s.notional, s.buy_volume, s.rv
    st.err[0], st.err[1], st.err[2], st.err[3] = s.volume_c, s.notional_c, s.buy_volume_c, s.rv_c
    trade_state_run(&st, price, amount, is_buy, n)
    s.high, s.low, s.close = st.high, st.low, st.close
    s.volume, s.notional, s.buy_volume, s.rv = st.sum[0], st.sum[1], st.sum[2], st.sum[3]
    s.volume_c, s.notional_c, s.buy_volume_c, s.rv_c = st.err[0], st.err[1], st.err[2], st.err[3]
    s.n_trades += n
    if ts[0] < s.first_ts:
        s.first_ts = ts[0]
    if ts[n - 1] > s.last_ts:
        s.last_ts = ts[n - 1]


# -- the trades of one open slice, kept until it closes ------------------------------------------

NO_TRADE_ID = -(1 << 63)  # a trade without an integer id: ordered by event time, then arrival
cdef int64_t NO_TRADE_ID_C = NO_TRADE_ID

cdef struct TradeRec:
    int64_t ts
    int64_t id
    int64_t seq  # arrival order within the symbol: the last tie-break, so the sort key is unique
    double price
    double amount
    uint8_t buy


cdef struct TradeBuf:
    TradeRec* recs
    Py_ssize_t n
    Py_ssize_t cap
    bint ordered  # every record so far came after the one before in (ts, id) order: no sort needed


cdef int64_t trade_id(object tid) except? -1:
    """A collector row's integer trade id, or NO_TRADE_ID (none, text, or beyond int64)."""
    if type(tid) is not int:
        return NO_TRADE_ID_C
    try:
        return <int64_t>tid
    except OverflowError:
        return NO_TRADE_ID_C


cdef int trade_rec_cmp(const void* a, const void* b) noexcept nogil:
    cdef const TradeRec* x = <const TradeRec*>a
    cdef const TradeRec* y = <const TradeRec*>b
    if x.ts != y.ts:
        return -1 if x.ts < y.ts else 1
    if x.id != y.id:
        return -1 if x.id < y.id else 1
    if x.seq != y.seq:
        return -1 if x.seq < y.seq else 1
    return 0


cdef int buf_append(TradeBuf* b, int64_t ts, int64_t tid, int64_t seq, double p, double q,
                    uint8_t buy) except -1 nogil:
    cdef TradeRec* grown
    cdef TradeRec* last
    if b.n == b.cap:
        b.cap = b.cap * 2 if b.cap else 16
        grown = <TradeRec*>realloc(b.recs, b.cap * sizeof(TradeRec))
        if grown == NULL:
            with gil:
                raise MemoryError()
        b.recs = grown
    if b.n:
        last = &b.recs[b.n - 1]
        if ts < last.ts or (ts == last.ts and tid < last.id):
            b.ordered = False
    b.recs[b.n] = TradeRec(ts, tid, seq, p, q, buy)
    b.n += 1
    return 0


cdef int buf_extend(TradeBuf* b, const int64_t* ts, const int64_t* ids, const double* price,
                    const double* amount, const uint8_t* is_buy, Py_ssize_t n, int64_t seq) except -1 nogil:
    """``buf_append`` of n trades at once (ids NULL: none has an id)."""
    cdef Py_ssize_t i
    cdef Py_ssize_t cap = b.cap if b.cap else 16
    cdef TradeRec* grown
    while cap < b.n + n:
        cap *= 2
    if cap != b.cap:
        grown = <TradeRec*>realloc(b.recs, cap * sizeof(TradeRec))
        if grown == NULL:
            with gil:
                raise MemoryError()
        b.recs, b.cap = grown, cap
    for i in range(n):
        buf_append(b, ts[i], NO_TRADE_ID_C if ids == NULL else ids[i], seq + i, price[i], amount[i], is_buy[i])
    return 0


cdef int buf_run(Slice* s, TradeBuf* b) except -1 nogil:
    """The buffered trades into ``s`` in exchange order, then the buffer emptied (its memory kept).

    Sorted, they go through the batch kernel's own ``trade_run`` as columns: bit-identical to it."""
    cdef Py_ssize_t i, n = b.n
    cdef TradeRec* r = b.recs
    if n == 0:
        return 0
    if not b.ordered:
        qsort(r, n, sizeof(TradeRec), trade_rec_cmp)
    cdef char* cols = <char*>malloc(n * (sizeof(int64_t) + 2 * sizeof(double) + sizeof(uint8_t)))
    if cols == NULL:
        with gil:
            raise MemoryError()
    cdef int64_t* ts = <int64_t*>cols
    cdef double* price = <double*>(ts + n)
    cdef double* amount = price + n
    cdef uint8_t* is_buy = <uint8_t*>(amount + n)
    for i in range(n):
        ts[i], price[i], amount[i], is_buy[i] = r[i].ts, r[i].price, r[i].amount, r[i].buy
    trade_run(s, ts, price, amount, is_buy, n)
    free(cols)
    b.n = 0
    b.ordered = True
    return 0


cdef int buf_peek(Slice* s, TradeBuf* b) except -1 nogil:
    """The buffered trades into ``s`` (a copy of their slice), the buffer kept: sorted in place, which the
    close would do the same way (the sort key is unique), so the slice it closes as is unchanged."""
    cdef Py_ssize_t n = b.n
    buf_run(s, b)
    b.n = n
    return 0


cdef inline void merge_trades(Slice* a, const Slice* b) noexcept nogil:
    cdef double r
    if b.n_trades == 0:
        return
    if a.n_trades == 0:
        memcpy(&a.n_trades, &b.n_trades, <size_t>(<char*>&b.n_updates - <char*>&b.n_trades))
        return
    if b.high > a.high:
        a.high = b.high
    if b.low < a.low:
        a.low = b.low
    dd_merge(&a.rv, &a.rv_c, b.rv, b.rv_c)
    if b.open != a.close:
        r = log_ratio(b.open, a.close)
        dd_add(&a.rv, &a.rv_c, r * r)
    a.close = b.close
    if b.first_ts < a.first_ts:
        a.first_ts = b.first_ts
    if b.last_ts > a.last_ts:
        a.last_ts = b.last_ts
    a.n_trades += b.n_trades
    dd_merge(&a.volume, &a.volume_c, b.volume, b.volume_c)
    dd_merge(&a.notional, &a.notional_c, b.notional, b.notional_c)
    dd_merge(&a.buy_volume, &a.buy_volume_c, b.buy_volume, b.buy_volume_c)


cdef inline void merge_book(Slice* a, const Slice* b) noexcept nogil:
    a.n_updates += b.n_updates
    a.book_ns += b.book_ns
    dd_merge(&a.mid_int, &a.mid_int_c, b.mid_int, b.mid_int_c)
    a.n_samples += b.n_samples
    dd_merge(&a.spread_sum, &a.spread_sum_c, b.spread_sum, b.spread_sum_c)
    if isnan(a.spread_max) or b.spread_max > a.spread_max:
        a.spread_max = b.spread_max
    dd_merge(&a.imb_sum, &a.imb_sum_c, b.imb_sum, b.imb_sum_c)
    if not isnan(b.microprice):
        a.microprice = b.microprice
        a.depth_bid = b.depth_bid
        a.depth_ask = b.depth_ask


cdef inline void merge_slice(Slice* a, const Slice* b) noexcept nogil:
    merge_trades(a, b)
    merge_book(a, b)


def merge_runs(cnp.ndarray slices, int64_t width_ns):
    """Merge consecutive slices (one symbol, ordered by start) into slices of ``width_ns``.

    Each output slice starts at a multiple of ``width_ns`` and merges every input slice whose
    start falls in it, in order. Merging 60 one-second slices gives the one-minute slice.
    """
    if slices.dtype != SLICE_DTYPE:
        raise TypeError(f"merge_runs: expected SLICE_DTYPE slices, got {slices.dtype}")
    if width_ns <= 0:
        raise ValueError("merge_runs: width_ns must be > 0")
    src = np.ascontiguousarray(slices)
    cdef Py_ssize_t n = src.shape[0], i, m = 0
    out = np.empty(n, dtype=SLICE_DTYPE)
    if n == 0:
        return out
    cdef Slice* s = <Slice*>cnp.PyArray_DATA(src)
    cdef Slice* o = <Slice*>cnp.PyArray_DATA(out)
    cdef int64_t group
    for i in range(n):
        group = s[i].start - s[i].start % width_ns
        if i > 0 and s[i].start < s[i - 1].start:
            raise ValueError("merge_runs: slices must be ordered by start")
        if m == 0 or o[m - 1].start != group:
            slice_init(&o[m], group)
            m += 1
        merge_slice(&o[m - 1], &s[i])
    return out[:m].copy()


def merge(cnp.ndarray a, cnp.ndarray b):
    """``a`` followed by ``b`` as one slice (both single SLICE_DTYPE records or length-1 arrays)."""
    left = np.array(a, dtype=SLICE_DTYPE).reshape(1).copy()
    right = np.array(b, dtype=SLICE_DTYPE).reshape(1)
    merge_slice(<Slice*>cnp.PyArray_DATA(left), <Slice*>cnp.PyArray_DATA(right))
    return left


def empty_slice(int64_t start):
    """The identity element of ``merge`` for a slice starting at ``start``."""
    out = np.empty(1, dtype=SLICE_DTYPE)
    slice_init(<Slice*>cnp.PyArray_DATA(out), start)
    return out


# -- the order book of one symbol -------------------------------------------------------------

MAX_INITIAL_RING_SLOTS = 64  # open slices a symbol's ring starts with; it grows past this when needed


cdef struct Side:
    double* keys  # ascending: price for asks, -price for bids, so index 0 is the best level
    double* sizes
    Py_ssize_t n
    Py_ssize_t cap


cdef int side_set(Side* side, double key, double size) except -1 nogil:
    cdef Py_ssize_t lo = 0, hi = side.n, mid
    while lo < hi:
        mid = (lo + hi) >> 1
        if side.keys[mid] < key:
            lo = mid + 1
        else:
            hi = mid
    if lo < side.n and side.keys[lo] == key:
        if size == 0.0:
            memmove(&side.keys[lo], &side.keys[lo + 1], (side.n - lo - 1) * sizeof(double))
            memmove(&side.sizes[lo], &side.sizes[lo + 1], (side.n - lo - 1) * sizeof(double))
            side.n -= 1
        else:
            side.sizes[lo] = size
        return 0
    if size == 0.0:
        return 0
    if side.n == side.cap:
        side_grow(side)
    memmove(&side.keys[lo + 1], &side.keys[lo], (side.n - lo) * sizeof(double))
    memmove(&side.sizes[lo + 1], &side.sizes[lo], (side.n - lo) * sizeof(double))
    side.keys[lo] = key
    side.sizes[lo] = size
    side.n += 1
    return 0


cdef int side_grow(Side* side) except -1 nogil:
    cdef Py_ssize_t cap = side.cap * 2 if side.cap else 64
    cdef double* keys = <double*>realloc(side.keys, cap * sizeof(double))
    if keys == NULL:
        with gil:
            raise MemoryError()
    side.keys = keys
    cdef double* sizes = <double*>realloc(side.sizes, cap * sizeof(double))
    if sizes == NULL:
        with gil:
            raise MemoryError()
    side.sizes = sizes
    side.cap = cap
    return 0


cdef inline double side_sum_top(const Side* side, Py_ssize_t levels) noexcept nogil:
    cdef double total = 0.0
    cdef Py_ssize_t i
    for i in range(min(levels, side.n)):
        total += side.sizes[i]
    return total


cdef inline double side_sum_within(const Side* side, double key_limit) noexcept nogil:
    cdef double total = 0.0
    cdef Py_ssize_t i
    for i in range(side.n):
        if side.keys[i] > key_limit:
            break
        total += side.sizes[i]
    return total


# -- per-symbol streaming state ---------------------------------------------------------------

cdef class _Symbol:
    """Open slices (a ring, with each slice's trades), the book and the current book sample of one symbol.

    The ring holds slices lo_k..hi_k; it grows when more are open at once (a long lateness, or a
    replay that closes nothing until its end), and reaches back to an earlier slice that was never
    emitted (a symbol's first record need not be its oldest).
    """

    cdef Slice* ring
    cdef TradeBuf* bufs  # bufs[k % cap]: the trades of slice k, run into it when it closes
    cdef Py_ssize_t cap
    cdef int64_t lo_k  # oldest open slice index
    cdef int64_t hi_k  # newest initialised slice index (lo_k - 1 when none)
    cdef bint fresh  # no slice initialised yet: the first record decides where the ring starts
    cdef int64_t seq  # trades taken so far (arrival order)
    cdef Side bids
    cdef Side asks
    cdef bint valid  # both sides non-empty: the sample below is defined
    cdef double mid, spread_bps, micro, imbalance, depth_bid, depth_ask
    cdef int64_t integ_t  # the mid is integrated up to here
    cdef double carry_micro, carry_depth_bid, carry_depth_ask

    def __cinit__(self, Py_ssize_t cap, int64_t first_k):
        self.ring = <Slice*>malloc(cap * sizeof(Slice))
        self.bufs = <TradeBuf*>calloc(cap, sizeof(TradeBuf))
        if self.ring == NULL or self.bufs == NULL:
            raise MemoryError()
        self.cap = cap
        self.lo_k = first_k
        self.hi_k = first_k - 1
        self.fresh = True
        self.seq = 0
        memset(&self.bids, 0, sizeof(Side))
        memset(&self.asks, 0, sizeof(Side))
        self.valid = False
        self.carry_micro = NAN
        self.carry_depth_bid = NAN
        self.carry_depth_ask = NAN

    def __dealloc__(self):
        cdef Py_ssize_t i
        if self.bufs != NULL:
            for i in range(self.cap):
                free(self.bufs[i].recs)
        free(self.bufs)
        free(self.ring)
        free(self.bids.keys)
        free(self.bids.sizes)
        free(self.asks.keys)
        free(self.asks.sizes)

    cdef int reserve(self, int64_t span) except -1 nogil:
        """Room for ``span`` open slices: a bigger ring, open slices moved to their new places."""
        cdef Py_ssize_t newcap = self.cap * 2, i
        cdef int64_t j
        cdef Slice* ring
        cdef TradeBuf* bufs
        if span <= self.cap:
            return 0
        if newcap < span:
            newcap = span
        ring = <Slice*>malloc(newcap * sizeof(Slice))
        bufs = <TradeBuf*>calloc(newcap, sizeof(TradeBuf))
        if ring == NULL or bufs == NULL:
            free(ring)
            free(bufs)
            with gil:
                raise MemoryError()
        for j in range(self.lo_k, self.hi_k + 1):
            ring[j % newcap] = self.ring[j % self.cap]
            bufs[j % newcap] = self.bufs[j % self.cap]
            self.bufs[j % self.cap].recs = NULL
        for i in range(self.cap):
            free(self.bufs[i].recs)  # buffers of closed slots (their memory was kept for reuse)
        free(self.ring)
        free(self.bufs)
        self.ring, self.bufs, self.cap = ring, bufs, newcap
        return 0

    cdef inline void init_slot(self, int64_t k, int64_t width) noexcept nogil:
        slice_init(&self.ring[k % self.cap], k * width)
        self.bufs[k % self.cap].n = 0
        self.bufs[k % self.cap].ordered = True

    cdef Slice* slot(self, int64_t k, int64_t width) except NULL nogil:
        """Slice k, initialising every slice between it and the open ones (callers pass k >= the floor)."""
        if self.fresh:
            self.fresh = False
            self.lo_k = k
            self.hi_k = k - 1
        if k < self.lo_k:  # never emitted: reach back
            self.reserve(self.hi_k - k + 1)
            while self.lo_k > k:
                self.lo_k -= 1
                self.init_slot(self.lo_k, width)
        elif k > self.hi_k:
            self.reserve(k - self.lo_k + 1)
            while self.hi_k < k:
                self.hi_k += 1
                self.init_slot(self.hi_k, width)
        return &self.ring[k % self.cap]

    cdef int add_trade(self, int64_t k, int64_t width, int64_t ts, int64_t tid, double p, double q,
                       uint8_t buy) except -1:
        self.slot(k, width)
        buf_append(&self.bufs[k % self.cap], ts, tid, self.seq, p, q, buy)
        self.seq += 1
        return 0

    cdef int add_run(self, int64_t k, int64_t width, const int64_t* ts, const int64_t* ids, const double* price,
                     const double* amount, const uint8_t* is_buy, Py_ssize_t n) except -1:
        """n trades of slice k at once."""
        self.slot(k, width)
        buf_extend(&self.bufs[k % self.cap], ts, ids, price, amount, is_buy, n, self.seq)
        self.seq += n
        return 0

    cdef int integrate(self, int64_t until, int64_t width) except -1 nogil:
        """Add the current mid over [integ_t, until) to the slices it spans."""
        cdef int64_t t = self.integ_t, k, end, dt
        cdef Slice* s
        while t < until:
            k = t // width
            end = (k + 1) * width
            if end > until:
                end = until
            dt = end - t
            s = self.slot(k, width)
            s.book_ns += dt
            dd_add_product(&s.mid_int, &s.mid_int_c, self.mid, <double>dt)
            t = end
        self.integ_t = until
        return 0

    cdef void sample(self, Py_ssize_t top_levels, double depth_bps) noexcept nogil:
        cdef double bb, ba, bq, aq, top_b, top_a
        self.valid = self.bids.n > 0 and self.asks.n > 0
        if not self.valid:
            return
        bb = -self.bids.keys[0]
        ba = self.asks.keys[0]
        bq = self.bids.sizes[0]
        aq = self.asks.sizes[0]
        self.mid = (bb + ba) * 0.5
        self.spread_bps = (ba - bb) / self.mid * BPS
        self.micro = (bb * aq + ba * bq) / (bq + aq)
        top_b = side_sum_top(&self.bids, top_levels)
        top_a = side_sum_top(&self.asks, top_levels)
        self.imbalance = (top_b - top_a) / (top_b + top_a)
        self.depth_bid = side_sum_within(&self.bids, -self.mid * (1.0 - depth_bps / BPS))
        self.depth_ask = side_sum_within(&self.asks, self.mid * (1.0 + depth_bps / BPS))

    cdef void record_sample(self, Slice* s) noexcept nogil:
        s.n_updates += 1
        if not self.valid:
            return
        s.n_samples += 1
        dd_add(&s.spread_sum, &s.spread_sum_c, self.spread_bps)
        if isnan(s.spread_max) or self.spread_bps > s.spread_max:
            s.spread_max = self.spread_bps
        dd_add(&s.imb_sum, &s.imb_sum_c, self.imbalance)
        s.microprice = self.micro
        s.depth_bid = self.depth_bid
        s.depth_ask = self.depth_ask

    cdef bint peek(self, int64_t k, int64_t width, Slice* out) except -1 nogil:
        """Slice k as it would close if nothing more came, into ``out``, this symbol unchanged; False when
        slice k is not open. The trades so far are run on a copy; the book part is what its messages so far
        sampled and integrated (to the last one, not to the watermark); last values are carried as at a close."""
        if self.fresh or k < self.lo_k or k > self.hi_k:
            return False
        memcpy(out, &self.ring[k % self.cap], sizeof(Slice))
        buf_peek(out, &self.bufs[k % self.cap])
        if isnan(out.microprice):
            out.microprice = self.carry_micro
            out.depth_bid = self.carry_depth_bid
            out.depth_ask = self.carry_depth_ask
        return True

    cdef int close_one(self, int64_t width, int64_t limit, Slice* out) except -1 nogil:
        """Close the oldest open slice into ``out``: its trades in exchange order, the mid integrated to
        its end (never past ``limit``, the watermark at a flush: time not yet seen is not extrapolated),
        last values carried."""
        cdef Slice* s = self.slot(self.lo_k, width)
        cdef int64_t end = min(s.start + width, limit)
        buf_run(s, &self.bufs[self.lo_k % self.cap])
        if self.valid and self.integ_t < end:
            if self.integ_t < s.start:
                self.integ_t = s.start
            self.integrate(end, width)
        if isnan(s.microprice):
            s.microprice = self.carry_micro
            s.depth_bid = self.carry_depth_bid
            s.depth_ask = self.carry_depth_ask
        else:
            self.carry_micro = s.microprice
            self.carry_depth_bid = s.depth_bid
            self.carry_depth_ask = s.depth_ask
        memcpy(out, s, sizeof(Slice))
        self.lo_k += 1
        return 0


# -- the engine of one exchange ---------------------------------------------------------------

cdef class Engine:
    """Event-time slicing of one exchange's trades and book rows into base-interval slices.

    Feed it collector batches (``trade_rows``/``book_rows``, times as float seconds) or lake
    columns (``trade_arrays``/``book_arrays``, int64 ns); take closed slices with ``take()``.
    """

    cdef readonly int64_t width_ns
    cdef readonly int64_t lateness_ns
    cdef readonly Py_ssize_t top_levels
    cdef readonly double depth_bps
    cdef readonly int64_t watermark
    cdef readonly int64_t late_trades
    cdef readonly int64_t late_book_rows
    cdef int64_t floor_k  # slices below this index are closed, for every symbol
    cdef int64_t next_close_ts  # the watermark at which slice floor_k closes
    cdef Py_ssize_t cap
    cdef dict _index
    cdef list _symbols  # _Symbol per index
    cdef readonly list symbols  # names per index
    cdef Slice* out
    cdef int64_t* out_sym
    cdef Py_ssize_t n_out, out_cap

    def __cinit__(self, int64_t width_ns, int64_t lateness_ns=0, Py_ssize_t top_levels=5, double depth_bps=10.0):
        if width_ns <= 0 or lateness_ns < 0 or top_levels <= 0 or depth_bps <= 0:
            raise ValueError("Engine: width_ns, top_levels and depth_bps must be > 0 and lateness_ns >= 0")
        self.width_ns = width_ns
        self.lateness_ns = lateness_ns
        self.top_levels = top_levels
        self.depth_bps = depth_bps
        self.watermark = -(1 << 62)
        self.floor_k = -(1 << 62)
        self.next_close_ts = -(1 << 62)
        self.cap = min(lateness_ns // width_ns + 3, MAX_INITIAL_RING_SLOTS)  # grows when more are open
        self._index = {}
        self._symbols = []
        self.symbols = []
        self.out = NULL
        self.out_sym = NULL
        self.n_out = 0
        self.out_cap = 0

    def __dealloc__(self):
        free(self.out)
        free(self.out_sym)

    cdef _Symbol symbol(self, object name, int64_t ts):
        cdef object idx = self._index.get(name)
        if idx is not None:
            return <_Symbol>self._symbols[<Py_ssize_t>idx]
        cdef int64_t k = ts // self.width_ns
        if k < self.floor_k:
            k = self.floor_k
        sym = _Symbol(self.cap, k)
        self._index[name] = len(self.symbols)
        self._symbols.append(sym)
        self.symbols.append(name)
        return sym

    cdef int emit(self, _Symbol sym, Py_ssize_t index, int64_t limit) except -1:
        cdef Slice* grown
        cdef int64_t* grown_sym
        if self.n_out == self.out_cap:
            self.out_cap = self.out_cap * 2 if self.out_cap else 256
            grown = <Slice*>realloc(self.out, self.out_cap * sizeof(Slice))
            grown_sym = <int64_t*>realloc(self.out_sym, self.out_cap * sizeof(int64_t))
            if grown == NULL or grown_sym == NULL:
                raise MemoryError()
            self.out = grown
            self.out_sym = grown_sym
        sym.close_one(self.width_ns, limit, &self.out[self.n_out])
        self.out_sym[self.n_out] = index
        self.n_out += 1
        return 0

    cdef int close_below(self, int64_t k, int64_t limit=INT64_MAX) except -1:
        """Close, for every symbol, each open slice with index < k (empty ones included)."""
        cdef Py_ssize_t i
        cdef _Symbol sym
        for i in range(len(self._symbols)):
            sym = <_Symbol>self._symbols[i]
            while sym.lo_k < k:
                self.emit(sym, i, limit)
        if k > self.floor_k:
            self.floor_k = k
            self.next_close_ts = (k + 1) * self.width_ns + self.lateness_ns
        return 0

    cdef inline int advance(self, int64_t ts) except -1:
        cdef int64_t k
        if ts > self.watermark:
            self.watermark = ts
            if ts >= self.next_close_ts:
                k = (ts - self.lateness_ns) // self.width_ns
                self.close_below(k)
        return 0

    # -- trades ----------------------------------------------------------------------------

    cdef inline bint add_trade(self, _Symbol sym, int64_t ts, int64_t tid, double p, double q,
                               bint buy) except -1:
        """Keep the trade with its slice (run in exchange order when the slice closes); False when late."""
        cdef int64_t k = ts // self.width_ns
        if k < self.floor_k:
            self.late_trades += 1
            return False
        sym.add_trade(k, self.width_ns, ts, tid, p, q, buy)
        return True

    def trade_rows(self, list rows):
        """Collector trade rows: [symbol, ts_event s, ts_recv s, id, id_text, side, price, amount]."""
        cdef Py_ssize_t i, n = len(rows)
        cdef list row
        cdef object name, last_name = None
        cdef _Symbol sym = None
        cdef int64_t ts
        cdef int64_t late0 = self.late_trades
        for i in range(n):
            row = rows[i]
            ts = llrint(<double>row[1] * 1e6) * 1000
            name = row[0]
            if sym is None or name != last_name:
                sym = self.symbol(name, ts)
                last_name = name
            self.advance(ts)
            self.add_trade(sym, ts, trade_id(row[3]), <double>row[6], <double>row[7], row[5] == "buy")
        return self.late_trades - late0

    def trade_arrays(self, object name, const int64_t[::1] ts, const double[::1] price, const double[::1] amount,
                     const uint8_t[::1] is_buy, const int64_t[::1] ids=None):
        """Lake trade columns of one symbol, in arrival order (``ids``: NO_TRADE_ID where none); returns
        how many were late."""
        cdef Py_ssize_t i = 0, j, n = ts.shape[0]
        if price.shape[0] != n or amount.shape[0] != n or is_buy.shape[0] != n or (ids is not None
                                                                                 and ids.shape[0] != n):
            raise ValueError("trade_arrays: columns differ in length")
        if n == 0:
            return 0
        cdef _Symbol sym = self.symbol(name, ts[0])
        cdef int64_t late0 = self.late_trades, k, start, newest
        cdef const int64_t* id_ptr = NULL
        while i < n:
            # a run of trades in one slice: as one by one (the watermark they raise closes only older slices)
            k = ts[i] // self.width_ns
            start = k * self.width_ns
            newest = ts[i]
            j = i + 1
            while j < n and start <= ts[j] < start + self.width_ns:
                if ts[j] > newest:
                    newest = ts[j]
                j += 1
            self.advance(ts[i])
            if k < self.floor_k:
                self.late_trades += j - i
            else:
                id_ptr = NULL if ids is None else &ids[i]
                sym.add_run(k, self.width_ns, &ts[i], id_ptr, &price[i], &amount[i], &is_buy[i], j - i)
            self.advance(newest)
            i = j
        return self.late_trades - late0

    # -- book ------------------------------------------------------------------------------

    cdef int book_message(self, _Symbol sym, int64_t ts, Py_ssize_t nrows) except -1:
        """Sample the book after one message (its rows already applied) at event time ``ts``."""
        cdef int64_t floor_t = self.floor_k * self.width_ns
        if ts // self.width_ns < self.floor_k:
            self.late_book_rows += nrows
        if ts < sym.integ_t:
            ts = sym.integ_t
        if ts < floor_t:
            ts = floor_t
        if sym.valid:
            sym.integrate(ts, self.width_ns)
        sym.sample(self.top_levels, self.depth_bps)
        sym.integ_t = ts
        sym.record_sample(sym.slot(ts // self.width_ns, self.width_ns))
        return 0

    cdef int book_apply(self, _Symbol sym, bint bid, double price, double size) except -1:
        if bid:
            side_set(&sym.bids, -price, size)
        else:
            side_set(&sym.asks, price, size)
        return 0

    def book_rows(self, list rows):
        """Collector l2_book rows: [symbol, ts_event s, ts_recv s, side, price, size, snapshot, sequence].

        Rows of one message share symbol and ts_recv; the batch must hold whole messages.
        A message whose rows are snapshot rows replaces the book. Returns late rows.
        """
        cdef Py_ssize_t i, n = len(rows), start = 0
        cdef list row
        cdef object name, msg_name = None
        cdef double recv, msg_recv = 0.0
        cdef int64_t ts, msg_ts = 0
        cdef _Symbol sym = None
        cdef int64_t late0 = self.late_book_rows
        for i in range(n):
            row = rows[i]
            name = row[0]
            recv = <double>row[2]
            if sym is None or recv != msg_recv or name != msg_name:
                if sym is not None:
                    self.book_message(sym, msg_ts, i - start)
                msg_ts = llrint(<double>row[1] * 1e6) * 1000
                sym = self.symbol(name, msg_ts)
                msg_name = name
                msg_recv = recv
                start = i
                self.advance(msg_ts)
                if row[6]:
                    sym.bids.n = 0
                    sym.asks.n = 0
            self.book_apply(sym, row[3] == "bid", <double>row[4], <double>row[5])
        if sym is not None:
            self.book_message(sym, msg_ts, n - start)
        return self.late_book_rows - late0

    def book_arrays(self, object name, const int64_t[::1] ts_event, const int64_t[::1] ts_recv,
                    const uint8_t[::1] is_bid, const double[::1] price, const double[::1] size,
                    const uint8_t[::1] snapshot):
        """Lake l2_book columns of one symbol ordered by ts_recv (whole messages); returns late rows."""
        cdef Py_ssize_t i, n = ts_event.shape[0], start = 0
        if not (ts_recv.shape[0] == is_bid.shape[0] == price.shape[0] == size.shape[0] == snapshot.shape[0] == n):
            raise ValueError("book_arrays: columns differ in length")
        if n == 0:
            return 0
        cdef _Symbol sym = self.symbol(name, ts_event[0])
        cdef int64_t late0 = self.late_book_rows
        for i in range(n):
            if i == 0 or ts_recv[i] != ts_recv[i - 1]:
                if i > 0:
                    self.book_message(sym, ts_event[start], i - start)
                start = i
                self.advance(ts_event[i])
                if snapshot[i]:
                    sym.bids.n = 0
                    sym.asks.n = 0
            self.book_apply(sym, is_bid[i], price[i], size[i])
        self.book_message(sym, ts_event[start], n - start)
        return self.late_book_rows - late0

    # -- output ----------------------------------------------------------------------------

    def flush(self):
        """Close every slice up to and including the one holding the watermark (at stop, end of batch)."""
        if self._symbols:
            self.close_below(self.watermark // self.width_ns + 1, self.watermark)

    def peek(self):
        """(symbol index per slice, SLICE_DTYPE slices): each symbol's open slice holding the watermark, as it
        would close if nothing more came (``_Symbol.peek``). The engine is unchanged: what it closes later is
        bit for bit what it would have closed without the peek."""
        cdef int64_t k = self.watermark // self.width_ns
        cdef Py_ssize_t i, m = 0, n = len(self._symbols)
        slices = np.empty(n, dtype=SLICE_DTYPE)
        syms = np.empty(n, dtype=np.int64)
        cdef Slice* out = <Slice*>cnp.PyArray_DATA(slices)
        cdef int64_t* out_sym = <int64_t*>cnp.PyArray_DATA(syms)
        if k < self.floor_k:
            return syms[:0], slices[:0]
        for i in range(n):
            if (<_Symbol>self._symbols[i]).peek(k, self.width_ns, &out[m]):
                out_sym[m] = i
                m += 1
        return syms[:m], slices[:m]

    @property
    def closed_waiting(self):
        """Slices closed and not yet taken (``take()`` returns them): a live loop publishes as soon as one is."""
        return self.n_out

    def take(self):
        """(symbol index per slice, SLICE_DTYPE slices) closed since the last call, in closing order."""
        slices = np.empty(self.n_out, dtype=SLICE_DTYPE)
        syms = np.empty(self.n_out, dtype=np.int64)
        if self.n_out:
            memcpy(cnp.PyArray_DATA(slices), self.out, self.n_out * sizeof(Slice))
            memcpy(cnp.PyArray_DATA(syms), self.out_sym, self.n_out * sizeof(int64_t))
        self.n_out = 0
        return syms, slices


cdef Py_ssize_t first_at_or_after(const int64_t* ts, Py_ssize_t n, int64_t t) noexcept nogil:
    cdef Py_ssize_t lo = 0, hi = n, mid
    while lo < hi:
        mid = (lo + hi) >> 1
        if ts[mid] < t:
            lo = mid + 1
        else:
            hi = mid
    return lo


cdef bint fill_slices(Slice* out, int64_t k0, int64_t k1, const int64_t* ts, const double* price,
                      const double* amount, const uint8_t* is_buy, Py_ssize_t i0, Py_ssize_t i1, Py_ssize_t n,
                      int64_t width) noexcept nogil:
    """Trades [i0, i1) (whole slices) into the slices they own, from the first one's (from k0 when i0 is 0)
    to the next chunk's first one's (through k1 when i1 is n), the empty ones included; slices are disjoint
    between callers. False, with nothing written, where the trades turn out not sorted by event time."""
    cdef Py_ssize_t i = i0, j
    cdef int64_t k, k_lo, k_hi, end
    cdef bint unsorted
    if i0 >= i1:
        return True
    k_lo = k0 if i0 == 0 else ts[i0] // width
    k_hi = k1 + 1 if i1 == n else ts[i1] // width
    if k_lo < k0 or k_hi > k1 + 1 or k_lo > k_hi:
        return False
    for k in range(k_lo, k_hi):
        slice_init(&out[k - k0], k * width)
    unsorted = i0 > 0 and ts[i0] < ts[i0 - 1]
    while i < i1 and not unsorted:
        k = ts[i] // width
        if k < k_lo or k >= k_hi:
            return False
        end = (k + 1) * width
        j = i + 1
        while j < i1 and ts[j] < end:  # sequential: a binary search here costs a cache miss per step
            unsorted |= ts[j] < ts[j - 1]  # checked on the way: no pass of its own over the times
            j += 1
        if not unsorted:
            trade_run(&out[k - k0], ts + i, price + i, amount + i, is_buy + i, j - i)
        i = j
    return not unsorted


cdef Py_ssize_t first_unsorted(const int64_t[::1] ts) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(1, ts.shape[0]):
        if ts[i] < ts[i - 1]:
            return i
    return -1


def batch_threads():
    """Threads ``trade_slices`` runs on for a large batch: OpenMP's maximum (the cores, or ``OMP_NUM_THREADS``)."""
    return openmp.omp_get_max_threads()


def trade_slices(const int64_t[::1] ts, const double[::1] price, const double[::1] amount,
                 const uint8_t[::1] is_buy, int64_t width_ns):
    """Batch kernel: one symbol's trades, sorted by event time, into every slice from the first to the last.

    Runs on all cores (``OMP_NUM_THREADS`` caps them): the trades are cut at slice boundaries into chunks
    handed to threads; each chunk checks its order, initialises its slices and computes each one whole
    with the streaming engine's own per-slice code, so the result is bit-identical to
    ``Engine.trade_arrays`` over the same trades.
    """
    cdef Py_ssize_t n = ts.shape[0], c, chunks, threads, i
    if price.shape[0] != n or amount.shape[0] != n or is_buy.shape[0] != n:
        raise ValueError("trade_slices: columns differ in length")
    if width_ns <= 0:
        raise ValueError("trade_slices: width_ns must be > 0")
    if n == 0:
        return np.empty(0, dtype=SLICE_DTYPE)
    if ts[n - 1] < ts[0]:
        raise ValueError(f"trade_slices: trades must be sorted by event time (row {first_unsorted(ts)})")
    cdef int64_t k0 = ts[0] // width_ns, k1 = ts[n - 1] // width_ns
    out = np.empty(k1 - k0 + 1, dtype=SLICE_DTYPE)
    cdef Slice* o = <Slice*>cnp.PyArray_DATA(out)
    threads = max(1, min(openmp.omp_get_max_threads(), n // MIN_ROWS_PER_THREAD))
    chunks = threads * CHUNKS_PER_THREAD if threads > 1 else 1
    bounds = np.empty(chunks + 1, dtype=np.intp)
    sorted_chunks = np.empty(chunks, dtype=np.uint8)
    cdef Py_ssize_t[::1] b = bounds
    cdef uint8_t[::1] ok = sorted_chunks
    b[0] = 0
    b[chunks] = n
    for c in range(1, chunks):  # cut at the first trade of a new slice at or after c/chunks of the rows
        i = n * c // chunks
        b[c] = max(b[c - 1], first_at_or_after(&ts[0], n, (ts[i] // width_ns) * width_ns))
    for c in prange(chunks, nogil=True, schedule="dynamic", chunksize=1, num_threads=threads):
        ok[c] = fill_slices(o, k0, k1, &ts[0], &price[0], &amount[0], &is_buy[0], b[c], b[c + 1], n, width_ns)
    if not sorted_chunks.all():
        raise ValueError(f"trade_slices: trades must be sorted by event time (row {first_unsorted(ts)})")
    return out
