/* Fused CPU kernels of the fmc codec (see native.py for why and how): the constant-bitrate path
 * here and in native_body.h, the variable-bitrate one in native_vbr.h.
 *
 * Hand-written because no library implements this codec (ASC: per-block min/max, the squared error
 * of every (mode, scale) candidate, midpoint-threshold indices, the implicit method's endpoint
 * nudge, bit records); the torch path runs it as ~45 map-sized tensor passes.
 *
 * One pass per block: load the block straight from the map (edge padding by index clamping),
 * min/max, every (mode, scale) candidate's squared error, the winner's indices, the implicit
 * method's endpoint nudge, and the record's bits. The arithmetic is the torch path's, operation
 * for operation, in the same work dtype (float32; float64 for bfloat16 maps), and the squared
 * errors are summed in the order of torch's CPU sum kernel (`tsum`), so both paths choose the
 * same candidate and write the same bytes. Build without -ffast-math and with -ffp-contract=off.
 *
 * Storage codes: 0 float16, 1 bfloat16, 2 int16, 3 int8, 4 uint8, 5 float32 input stored as
 * float16 (cast here, round to nearest even as torch does).
 */
#define _GNU_SOURCE /* sched_getcpu, CPU affinity (native_pool.h) */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>

#ifndef TV
#define TV 32 /* bytes per torch CPU vector (32 for AVX2 / default, 64 for AVX512) */
#endif
#define MT 4   /* tables per mode at most */
#define MP 16  /* points per table at most */
#define NMAX 512
#define MAX_PARTS 64 /* threads per call at most (native.MAX_PARTS) */
#include "native_pool.h"

typedef struct {
    double afrac[MT][MP], amid[MT][MP], bfrac[MT][MP], bmid[MT][MP], bfg[MT][MP], dtab[2 * MT][MP];
} tabs_t;

/* configuration, int64 each */
enum { C_ST, C_N, C_C, C_H, C_W, C_BC, C_BH, C_BW, C_K, C_IMPLICIT, C_MODEB, C_NS, C_FB, C_BITS, C_EA, C_EB,
       C_OUT, C_FIT, C_COUNT }; /* C_FIT: `endpoints: fit` passes (0: range endpoints) */

#ifdef __F16C__ /* the instructions: through _Float16 the compiler fuses float16 -> float -> double into one
                  conversion it calls a software routine for */
#include <immintrin.h>
static inline float h2f(uint16_t b) { return _cvtsh_ss(b); }
static inline uint16_t f2h(float f) { return _cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT); }
#else
static inline float h2f(uint16_t b) { _Float16 h; memcpy(&h, &b, 2); return (float)h; }
static inline uint16_t f2h(float f) { _Float16 h = (_Float16)f; uint16_t b; memcpy(&b, &h, 2); return b; }
#endif
static inline float bf2f(uint16_t b) { uint32_t u = (uint32_t)b << 16; float f; memcpy(&f, &u, 4); return f; }
static inline uint16_t f2bf(float f) { /* torch's round_to_nearest_even (no NaN here) */
    uint32_t u; memcpy(&u, &f, 4);
    return (uint16_t)((u + (((u >> 16) & 1) + 0x7FFF)) >> 16);
}

/* bit writer / reader, MSB first */
typedef struct { uint8_t *p; uint64_t acc; int n; } bw_t;
static inline void put(bw_t *w, uint32_t v, int width) { /* width <= 32; 4 whole bytes at a time */
    if (!width) return;
    w->acc = (w->acc << width) | v;
    w->n += width;
    if (w->n >= 32) {
        w->n -= 32;
        uint32_t o = __builtin_bswap32((uint32_t)(w->acc >> w->n));
        memcpy(w->p, &o, 4);
        w->p += 4;
    }
}
static inline void put_flush(bw_t *w) {
    while (w->n >= 8) { w->n -= 8; *w->p++ = (uint8_t)(w->acc >> w->n); }
    if (w->n) *w->p++ = (uint8_t)(w->acc << (8 - w->n));
    w->n = 0;
}

typedef struct { const uint8_t *p, *end; uint64_t acc; int n; } br_t;
static inline uint32_t get(br_t *r, int width) {
    if (!width) return 0;
    while (r->n < width) { r->acc = (r->acc << 8) | (r->p < r->end ? *r->p++ : 0); r->n += 8; }
    r->n -= width;
    return (uint32_t)((r->acc >> r->n) & ((1ull << width) - 1));
}

/* raw pattern of element i (storage 5: the float16 pattern of the float32 element) */
static inline uint32_t load_bits(const void *x, int64_t i, int st) {
    switch (st) {
    case 0: case 1: case 2: return ((const uint16_t *)x)[i];
    case 3: case 4: return ((const uint8_t *)x)[i];
    default: return f2h(((const float *)x)[i]);
    }
}


#if defined(__AVX2__) && defined(__F16C__)
#include <immintrin.h>
#define FAST_GATHER 1
/* 8 blocks of one block row, 1 x bh x bw (bw 4 or 8), float16 (st 0) or float32-as-float16 (st 5)
 * maps, none padded: rows loaded as vectors and transposed so that v[i] holds value i of the 8
 * blocks. bw 4 puts blocks 0, 2, 4, 6, 1, 3, 5, 7 in lanes 0..7 (bw 8: in order). Returns the
 * non-finite flag. */
static inline __m256 ld8(const void *x, int64_t at, int st, __m256i *badv) {
    __m128i h;
    if (st == 0) h = _mm_loadu_si128((const __m128i *)((const uint16_t *)x + at));
    else h = _mm256_cvtps_ph(_mm256_loadu_ps((const float *)x + at), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m128i e = _mm_and_si128(h, _mm_set1_epi16(0x7C00));
    *badv = _mm256_or_si256(*badv, _mm256_castsi128_si256(_mm_cmpeq_epi16(e, _mm_set1_epi16(0x7C00))));
    return _mm256_cvtph_ps(h);
}

/* 4 values of two blocks (p0, p1) as one vector of 8 (storage 0 or 5) */
static inline __m256 ld44(const void *x, int64_t p0, int64_t p1, int st, __m256i *badv) {
    __m128i h;
    if (st == 0)
        h = _mm_castpd_si128(_mm_loadh_pd(_mm_castsi128_pd(_mm_loadl_epi64((const __m128i *)((const uint16_t *)x + p0))),
                                          (const double *)((const uint16_t *)x + p1)));
    else
        h = _mm256_cvtps_ph(_mm256_set_m128(_mm_loadu_ps((const float *)x + p1), _mm_loadu_ps((const float *)x + p0)),
                            _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m128i e = _mm_and_si128(h, _mm_set1_epi16(0x7C00));
    *badv = _mm256_or_si256(*badv, _mm256_castsi128_si256(_mm_cmpeq_epi16(e, _mm_set1_epi16(0x7C00))));
    return _mm256_cvtph_ps(h);
}

/* Element offsets of the next 8 blocks (bc 1) from block position (nn, ic, ih, iw), advanced past
 * them; 0 (position unchanged) when one of them is padded at the map's edge. Blocks may run over
 * block rows and channels: maps whose width holds fewer than 8 blocks (56 / 8 = 7) take this path.
 * 2: the 8 blocks are consecutive in one block row, so each row of them is one contiguous run. */
static inline int bases8(const int64_t *cfg, int64_t *pn, int64_t *pc, int64_t *ph, int64_t *pw, int64_t *bases) {
    const int64_t C = cfg[C_C], H = cfg[C_H], Wd = cfg[C_W], bh = cfg[C_BH], bw = cfg[C_BW];
    const int64_t gh = (H + bh - 1) / bh, gw = (Wd + bw - 1) / bw;
    int64_t nn = *pn, ic = *pc, ih = *ph, iw = *pw;
    if (iw + 8 <= gw && (ih + 1) * bh <= H && (iw + 8) * bw <= Wd) { /* the common case: one run per row */
        const int64_t b0 = ((nn * C + ic) * H + ih * bh) * Wd + iw * bw;
        for (int l = 0; l < 8; l++) bases[l] = b0 + l * bw;
        if ((*pw = iw + 8) == gw) { *pw = 0; if ((*ph = ih + 1) == gh) { *ph = 0; if ((*pc = ic + 1) == C) { *pc = 0; *pn = nn + 1; } } }
        return 2;
    }
    for (int l = 0; l < 8; l++) {
        if ((ih + 1) * bh > H || (iw + 1) * bw > Wd) return 0;
        bases[l] = ((nn * C + ic) * H + ih * bh) * Wd + iw * bw;
        if (++iw == gw) { iw = 0; if (++ih == gh) { ih = 0; if (++ic == C) { ic = 0; nn++; } } }
    }
    *pn = nn; *pc = ic; *ph = ih; *pw = iw;
    return 1;
}

static uint32_t fast_gather(const void *x, int st, const int64_t *bases, int run, int64_t Wd, int bh, int bw, __m256 *v) {
    __m256i badv = _mm256_setzero_si256();
    for (int y = 0; y < bh; y++) {
        int64_t dy = y * Wd;
        if (bw == 4) {
            __m256 r0, r1, r2, r3;
            if (run) {
                r0 = ld8(x, bases[0] + dy, st, &badv); r1 = ld8(x, bases[0] + dy + 8, st, &badv);
                r2 = ld8(x, bases[0] + dy + 16, st, &badv); r3 = ld8(x, bases[0] + dy + 24, st, &badv);
            } else {
                r0 = ld44(x, bases[0] + dy, bases[1] + dy, st, &badv); r1 = ld44(x, bases[2] + dy, bases[3] + dy, st, &badv);
                r2 = ld44(x, bases[4] + dy, bases[5] + dy, st, &badv); r3 = ld44(x, bases[6] + dy, bases[7] + dy, st, &badv);
            }
            __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
            __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
            v[y * 4 + 0] = _mm256_shuffle_ps(t0, t2, 0x44);
            v[y * 4 + 1] = _mm256_shuffle_ps(t0, t2, 0xEE);
            v[y * 4 + 2] = _mm256_shuffle_ps(t1, t3, 0x44);
            v[y * 4 + 3] = _mm256_shuffle_ps(t1, t3, 0xEE);
        } else {
            __m256 r[8], t[8], s[8];
            for (int j = 0; j < 8; j++) r[j] = ld8(x, bases[j] + dy, st, &badv);
            for (int j = 0; j < 8; j += 2) { t[j] = _mm256_unpacklo_ps(r[j], r[j + 1]); t[j + 1] = _mm256_unpackhi_ps(r[j], r[j + 1]); }
            s[0] = _mm256_shuffle_ps(t[0], t[2], 0x44); s[1] = _mm256_shuffle_ps(t[0], t[2], 0xEE);
            s[2] = _mm256_shuffle_ps(t[1], t[3], 0x44); s[3] = _mm256_shuffle_ps(t[1], t[3], 0xEE);
            s[4] = _mm256_shuffle_ps(t[4], t[6], 0x44); s[5] = _mm256_shuffle_ps(t[4], t[6], 0xEE);
            s[6] = _mm256_shuffle_ps(t[5], t[7], 0x44); s[7] = _mm256_shuffle_ps(t[5], t[7], 0xEE);
            for (int j = 0; j < 4; j++) {
                v[y * 8 + j] = _mm256_permute2f128_ps(s[j], s[j + 4], 0x20);
                v[y * 8 + j + 4] = _mm256_permute2f128_ps(s[j], s[j + 4], 0x31);
            }
        }
    }
    return !_mm256_testz_si256(badv, badv);
}
/* Decoder side of fast_gather: 8 float16-stored blocks of one block row, records read lane by
 * lane, points computed as vectors, values picked per lane, rows transposed back and stored
 * (float16, or float32 for maps that came in as float32). Returns 0, 1 or 2 as fmc_decode. */
static void transpose_rows(int bw, __m256 *v) { /* the involution used by fast_gather */
    if (bw == 4) {
        __m256 t0 = _mm256_unpacklo_ps(v[0], v[1]), t1 = _mm256_unpackhi_ps(v[0], v[1]);
        __m256 t2 = _mm256_unpacklo_ps(v[2], v[3]), t3 = _mm256_unpackhi_ps(v[2], v[3]);
        v[0] = _mm256_shuffle_ps(t0, t2, 0x44); v[1] = _mm256_shuffle_ps(t0, t2, 0xEE);
        v[2] = _mm256_shuffle_ps(t1, t3, 0x44); v[3] = _mm256_shuffle_ps(t1, t3, 0xEE);
        return;
    }
    __m256 t[8], s[8];
    for (int j = 0; j < 8; j += 2) { t[j] = _mm256_unpacklo_ps(v[j], v[j + 1]); t[j + 1] = _mm256_unpackhi_ps(v[j], v[j + 1]); }
    s[0] = _mm256_shuffle_ps(t[0], t[2], 0x44); s[1] = _mm256_shuffle_ps(t[0], t[2], 0xEE);
    s[2] = _mm256_shuffle_ps(t[1], t[3], 0x44); s[3] = _mm256_shuffle_ps(t[1], t[3], 0xEE);
    s[4] = _mm256_shuffle_ps(t[4], t[6], 0x44); s[5] = _mm256_shuffle_ps(t[4], t[6], 0xEE);
    s[6] = _mm256_shuffle_ps(t[5], t[7], 0x44); s[7] = _mm256_shuffle_ps(t[5], t[7], 0xEE);
    for (int j = 0; j < 4; j++) {
        v[j] = _mm256_permute2f128_ps(s[j], s[j + 4], 0x20);
        v[j + 4] = _mm256_permute2f128_ps(s[j], s[j + 4], 0x31);
    }
}

/* rd: the records (CBR), or the endpoints and flags with ird the indices (VBR's two sections; CBR passes rd) */
static int fast_decode8(br_t *rd, br_t *ird, int rec64, const int64_t *cfg, const float *tab, void *out,
                        const int64_t *bases, int run) {
    const int k = (int)cfg[C_K], fb = (int)cfg[C_FB], implicit = (int)cfg[C_IMPLICIT], ns = (int)cfg[C_NS];
    const int allow_b = (int)cfg[C_MODEB], kind = (int)cfg[C_OUT], P = 1 << k;
    const int bh = (int)cfg[C_BH], bw = (int)cfg[C_BW], n = bh * bw, per = 32 / k, nw = (n + per - 1) / per;
    const int64_t Wd = cfg[C_W];
    static const int interleaved[8] = {0, 4, 1, 5, 2, 6, 3, 7}, in_order[8] = {0, 1, 2, 3, 4, 5, 6, 7};
    const int *lane_of = bw == 4 ? interleaved : in_order;
    uint16_t e0s[8], e1s[8];
    int32_t flag[8], words[NMAX / 8 + 1][8];
    for (int blk = 0; blk < 8; blk++) {
        int l = lane_of[blk];
        if (rec64) {
            uint64_t word;
            memcpy(&word, rd->p, 8);
            rd->p += 8;
            word = __builtin_bswap64(word);
            e0s[l] = (uint16_t)(word >> 48); e1s[l] = (uint16_t)(word >> 32); flag[l] = 0;
            words[0][l] = (int32_t)(uint32_t)word;
        } else {
            e0s[l] = (uint16_t)get(rd, 16); e1s[l] = (uint16_t)get(rd, 16); flag[l] = (int32_t)get(rd, fb);
            for (int j = 0; j < nw; j++) words[j][l] = (int32_t)get(ird, (j + 1 < nw ? per : n - j * per) * k);
        }
    }
    __m256i p0 = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)e0s));
    __m256i p1 = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)e1s));
    __m256 e0 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)e0s)), e1 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)e1s));
    __m256 mb = _mm256_cmp_ps(e0, e1, _CMP_GT_OQ);
    if (!allow_b && _mm256_movemask_ps(mb)) return 1;
    __m256 a = _mm256_blendv_ps(e0, e1, mb), b = _mm256_blendv_ps(e1, e0, mb), span = _mm256_sub_ps(b, a);
    __m256i one = _mm256_set1_epi32(1), mbi = _mm256_castps_si256(mb), sc;
    if (implicit) {
        __m256i below = _mm256_castps_si256(_mm256_cmp_ps(b, _mm256_setzero_ps(), _CMP_LE_OQ));
        sc = _mm256_mullo_epi32(_mm256_and_si256(_mm256_xor_si256(p0, p1), one), _mm256_sub_epi32(one, below));
    } else {
        sc = _mm256_loadu_si256((const __m256i *)flag);
        if (_mm256_movemask_epi8(_mm256_cmpgt_epi32(sc, _mm256_set1_epi32(ns - 1)))) return 2;
    }
    __m256i row = _mm256_add_epi32(sc, _mm256_and_si256(mbi, _mm256_set1_epi32(ns)));
    __m256i at = _mm256_mullo_epi32(row, _mm256_set1_epi32(MP));
    __m256 pts[MP];
    for (int j = 0; j < P; j++) { /* a + span * f, rounded to float16 as the output will be */
        __m256 f = _mm256_i32gather_ps(tab, _mm256_add_epi32(at, _mm256_set1_epi32(j)), 4);
        __m256 p = _mm256_add_ps(a, _mm256_mul_ps(span, f));
        if (j == 0) p = _mm256_andnot_ps(mb, p);
        pts[j] = _mm256_cvtph_ps(_mm256_cvtps_ph(p, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    }
    __m256 rows[8];
    const __m256i mask = _mm256_set1_epi32(P - 1);
    for (int y = 0; y < bh; y++) {
        for (int c = 0; c < bw; c++) {
            int i = y * bw + c, j = i / per, sh = (((j + 1 < nw ? per : n - j * per)) - 1 - (i - j * per)) * k;
            __m256i ix = _mm256_and_si256(_mm256_srli_epi32(_mm256_loadu_si256((const __m256i *)words[j]), sh), mask);
            __m256 o = pts[0];
            for (int q = 1; q < P; q++)
                o = _mm256_blendv_ps(o, pts[q], _mm256_castsi256_ps(_mm256_cmpeq_epi32(ix, _mm256_set1_epi32(q))));
            rows[c] = o;
        }
        transpose_rows(bw, rows);
        int64_t dy = y * Wd;
        for (int j = 0; j < bw; j++) {
            if (bw == 8 || run) { /* run: rows[j] is 8 consecutive values from the first block's row */
                int64_t at = bw == 8 ? bases[j] + dy : bases[0] + dy + 8 * j;
                if (kind) _mm256_storeu_ps((float *)out + at, rows[j]);
                else _mm_storeu_si128((__m128i *)((uint16_t *)out + at),
                                      _mm256_cvtps_ph(rows[j], _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
            } else if (kind) { /* blocks 2j and 2j + 1 */
                _mm_storeu_ps((float *)out + bases[2 * j] + dy, _mm256_castps256_ps128(rows[j]));
                _mm_storeu_ps((float *)out + bases[2 * j + 1] + dy, _mm256_extractf128_ps(rows[j], 1));
            } else {
                __m128i h = _mm256_cvtps_ph(rows[j], _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
                _mm_storel_epi64((__m128i *)((uint16_t *)out + bases[2 * j] + dy), h);
                _mm_storeh_pd((double *)((uint16_t *)out + bases[2 * j + 1] + dy), _mm_castsi128_pd(h));
            }
        }
    }
    return 0;
}
#endif

static void fit_block(const double *v, int n, int P, const double *fr, int is_b, int st, int wide, double *lo,
                      double *hi, uint8_t *ix, int iterations); /* native_fit.h */

#define W float
#define SUF f
#define LANES 8
typedef float vf_t __attribute__((vector_size(32)));
typedef int32_t vfi_t __attribute__((vector_size(32)));
#define VW vf_t
#define VI vfi_t
#include "native_body.h"
#include "native_vbr.h"
#undef W
#undef SUF
#undef LANES
#undef VW
#undef VI
#define W double
#define SUF d
#define LANES 4
typedef double vd_t __attribute__((vector_size(32)));
typedef int64_t vdi_t __attribute__((vector_size(32)));
#define VW vd_t
#define VI vdi_t
#include "native_body.h"
#include "native_vbr.h"
#include "native_fit.h"

/* Several parts of one map at once: parts 1.. on their own threads, part 0 on the caller's (a
 * thread that cannot start runs on the caller's too). Threads here rather than from Python: one
 * ctypes call per map, no executor hand-offs (those cost more than a 64x64x64 map's half). */
typedef struct {
    int wide, dec, rc;
    const void *x;
    const uint8_t *payload;
    int64_t nbytes, b0, b1;
    const int64_t *cfg;
    const tabs_t *T;
    void *out;
    int64_t *counts;
    double qscale;
} job_t;

static void *run_job(void *p) {
    job_t *j = p;
    if (j->dec) j->rc = j->wide ? fmc_decode_d(j->payload, j->nbytes, j->cfg, j->T, j->b0, j->b1, j->out, j->qscale)
                                : fmc_decode_f(j->payload, j->nbytes, j->cfg, j->T, j->b0, j->b1, j->out, j->qscale);
    else j->rc = j->wide ? fmc_encode_d(j->x, j->cfg, j->T, j->b0, j->b1, j->out, j->counts)
                         : fmc_encode_f(j->x, j->cfg, j->T, j->b0, j->b1, j->out, j->counts);
    return 0;
}

static int run_parts(job_t *jobs, int parts) {
    int rc = 0;
    pool_run(run_job, jobs, sizeof jobs[0], parts);
    for (int i = 0; i < parts; i++) if (jobs[i].rc && !rc) rc = jobs[i].rc;
    return rc;
}

/* Encode block ranges [ranges[2i], ranges[2i+1]) in parallel; counts: 8 per part (zeroed here). Returns as
 * fmc_encode. */
int fmc_encode_par(int wide, const void *x, const int64_t *cfg, const tabs_t *T, const int64_t *ranges, int parts,
                   uint8_t *out, int64_t *counts) {
    job_t jobs[MAX_PARTS];
    if (parts < 1 || parts > MAX_PARTS) return -2;
    memset(counts, 0, sizeof(int64_t) * 8 * parts); /* the parts add to their rows */
    for (int i = 0; i < parts; i++)
        jobs[i] = (job_t){.wide = wide, .x = x, .b0 = ranges[2 * i], .b1 = ranges[2 * i + 1], .cfg = cfg, .T = T,
                          .out = out, .counts = counts + 8 * i};
    return run_parts(jobs, parts);
}

/* Decode block ranges in parallel. Returns as fmc_decode (the first failing part's code). */
int fmc_decode_par(int wide, const uint8_t *payload, int64_t nbytes, const int64_t *cfg, const tabs_t *T,
                   const int64_t *ranges, int parts, void *out, double qscale) {
    job_t jobs[MAX_PARTS];
    if (parts < 1 || parts > MAX_PARTS) return -2;
    for (int i = 0; i < parts; i++)
        jobs[i] = (job_t){.wide = wide, .dec = 1, .payload = payload, .nbytes = nbytes, .b0 = ranges[2 * i],
                          .b1 = ranges[2 * i + 1], .cfg = cfg, .T = T, .out = out, .qscale = qscale};
    return run_parts(jobs, parts);
}

/* A part's piece of one VBR section, written from bit `at` of the payload while other parts write
 * theirs. The byte holding `at` may also hold the end of the piece before (another thread's), so
 * the piece's bits in that byte collect in `head` and the caller ORs them in after the threads
 * are done; the rest goes through an ordinary writer from the next byte on. */
typedef struct { bw_t w; int head_left; uint32_t head; } sw_t;

static inline sw_t sw_at(uint8_t *out, int64_t at) {
    const int r = (int)(at & 7);
    return (sw_t){{out + (at >> 3) + (r != 0), 0, 0}, r ? 8 - r : 0, 0};
}
static inline void sw_put(sw_t *s, uint32_t v, int width) {
    if (__builtin_expect(s->head_left > 0, 0) && width) {
        const int t = width < s->head_left ? width : s->head_left;
        s->head = (s->head << t) | (v >> (width - t));
        s->head_left -= t;
        width -= t;
        v = width ? v & (uint32_t)((1ull << width) - 1) : 0;
    }
    put(&s->w, v, width);
}

/* one block's kk-bit indices from its `index_words` (32 / kk fields a word, the last one shorter) */
static inline void sw_words(sw_t *s, const uint32_t *words, int n, int kk) {
    const int per = 32 / kk;
    for (int j = 0, i0 = 0; i0 < n; j++, i0 += per) sw_put(s, words[j], (n - i0 < per ? n - i0 : per) * kk);
}

enum { VBR_PLANES = 3, VBR_SECTIONS = VBR_PLANES + 5 }; /* tag planes, then normal meta / indices, low
                                                          meta / indices, const values */
typedef struct {
    const int64_t *cfg, *code, *len;
    const uint8_t *tags;
    const uint64_t *meta;
    const uint32_t *words;
    uint8_t *out;
    int64_t b0, b1, at[VBR_SECTIONS], head_at[VBR_SECTIONS];
    uint8_t head[VBR_SECTIONS];
} pack_t;

/* section sec of blocks [b0, b1) from bit j->at[sec] */
static void pack_section(pack_t *j, int sec) {
    const int64_t *cfg = j->cfg, *len = j->len;
    const int bits = (int)cfg[C_BITS], fb = (int)cfg[C_FB], k = (int)cfg[C_K];
    const int n = (int)(cfg[C_BC] * cfg[C_BH] * cfg[C_BW]), nw = (n + 32 / k - 1) / (32 / k);
    const uint8_t *tags = j->tags;
    sw_t s = sw_at(j->out, j->at[sec]);
    j->head_at[sec] = -1;
    if (sec < VBR_PLANES) { /* plane sec: bit sec of the code of every block whose code is longer */
        uint32_t acc = 0;
        int got = 0;
        for (int64_t b = j->b0; b < j->b1; b++) {
            const int L = (int)len[tags[b]];
            if (L <= sec) continue;
            acc = (acc << 1) | ((uint32_t)(j->code[tags[b]] >> (L - 1 - sec)) & 1);
            if (++got == 32) { sw_put(&s, acc, 32); acc = 0; got = 0; }
        }
        sw_put(&s, acc, got);
    } else if (sec < VBR_PLANES + 4) { /* normal (tag 3, k bits) then low (tag 2, k - 1 bits) */
        const int tag = sec < VBR_PLANES + 2 ? 3 : 2, rows = (sec - VBR_PLANES) % 2 == 0;
        for (int64_t b = j->b0; b < j->b1; b++) {
            if (tags[b] != tag) continue;
            if (rows) {
                sw_put(&s, (uint32_t)(j->meta[b] >> 32) & 0xFFFF, bits);
                sw_put(&s, (uint32_t)(j->meta[b] >> 16) & 0xFFFF, bits);
                sw_put(&s, (uint32_t)j->meta[b] & 0xFFFF, fb);
            } else {
                sw_words(&s, j->words + b * nw, n, tag == 3 ? k : k - 1);
            }
        }
    } else {
        for (int64_t b = j->b0; b < j->b1; b++)
            if (tags[b] == 1) sw_put(&s, (uint32_t)(j->meta[b] >> 32) & 0xFFFF, bits);
    }
    put_flush(&s.w);
    if (j->at[sec] & 7) {
        j->head_at[sec] = j->at[sec] >> 3;
        j->head[sec] = (uint8_t)(s.head << s.head_left);
    }
}

static void *run_pack(void *p) {
    for (int sec = 0; sec < VBR_SECTIONS; sec++) pack_section(p, sec);
    return 0;
}

/* Lay out a VBR payload from fmc_vbr_scan's fields (see native_vbr.h) over the scan's block ranges
 * at once: the tag code's bit planes (plane j: bit j of every block whose code is longer than j),
 * then the normal blocks' meta rows and indices, the low blocks' likewise (k - 1 bits), then each
 * const block's value. code / len: the canonical code and length of each tag; counts: the scan's
 * rows (16 per part; 8..11 the part's tag counts). Every payload byte is written. Returns the
 * payload bits (-2: bad part count). */
static int64_t fmc_vbr_pack(const int64_t *cfg, const uint8_t *tags, const uint64_t *meta, const uint32_t *words,
                            const int64_t *code, const int64_t *len, const int64_t *ranges, int parts,
                            const int64_t *counts, uint8_t *out) {
    if (parts < 1 || parts > MAX_PARTS) return -2;
    const int64_t bits = cfg[C_BITS], fb = cfg[C_FB], k = cfg[C_K];
    const int64_t n = cfg[C_BC] * cfg[C_BH] * cfg[C_BW];
    pack_t jobs[MAX_PARTS];
    for (int i = 0; i < parts; i++)
        jobs[i] = (pack_t){.cfg = cfg, .code = code, .len = len, .tags = tags, .meta = meta, .words = words,
                           .out = out, .b0 = ranges[2 * i], .b1 = ranges[2 * i + 1]};
    int64_t at = 0;
    for (int sec = 0; sec < VBR_SECTIONS; sec++)
        for (int i = 0; i < parts; i++) {
            const int64_t *c = counts + 16 * i + 8; /* zero, const, low, normal */
            int64_t size;
            if (sec < VBR_PLANES) {
                size = 0;
                for (int t = 0; t < 4; t++) if (len[t] > sec) size += c[t];
            } else if (sec < VBR_PLANES + 4) {
                const int64_t m = c[sec < VBR_PLANES + 2 ? 3 : 2];
                size = (sec - VBR_PLANES) % 2 == 0 ? m * (2 * bits + fb) : m * n * (sec < VBR_PLANES + 2 ? k : k - 1);
            } else {
                size = c[1] * bits;
            }
            if (at & 7) out[at >> 3] = 0; /* a byte two pieces share: its first piece ORs in below */
            jobs[i].at[sec] = at;
            at += size;
        }
    pool_run(run_pack, jobs, sizeof jobs[0], parts);
    for (int sec = 0; sec < VBR_SECTIONS; sec++) /* in stream order: a piece that starts and ends in one */
        for (int i = 0; i < parts; i++)          /* byte ORs in after the piece before it */
            if (jobs[i].head_at[sec] >= 0) out[jobs[i].head_at[sec]] |= jobs[i].head[sec];
    return at;
}

/* VBR scan of several block ranges at once (threads as run_parts); counts: 16 per part (zeroed here). */
typedef struct {
    int wide, rc;
    const void *x;
    const int64_t *cfg, *cfg1;
    const tabs_t *T, *T1;
    int64_t b0, b1;
    uint8_t *tags;
    uint32_t *words;
    uint64_t *meta;
    int64_t *counts;
} scan_t;

static void *run_scan(void *p) {
    scan_t *j = p;
    j->rc = j->wide ? fmc_vbr_scan_d(j->x, j->cfg, j->T, j->cfg1, j->T1, j->b0, j->b1, j->tags, j->meta, j->words, j->counts)
                    : fmc_vbr_scan_f(j->x, j->cfg, j->T, j->cfg1, j->T1, j->b0, j->b1, j->tags, j->meta, j->words, j->counts);
    return 0;
}

static int fmc_vbr_scan_par(int wide, const void *x, const int64_t *cfg, const tabs_t *T, const int64_t *cfg1,
                            const tabs_t *T1, const int64_t *ranges, int parts, uint8_t *tags, uint64_t *meta,
                            uint32_t *words, int64_t *counts) {
    scan_t jobs[MAX_PARTS];
    int rc = 0;
    if (parts < 1 || parts > MAX_PARTS) return -2;
    memset(counts, 0, sizeof(int64_t) * 16 * parts); /* the parts add to their rows */
    for (int i = 0; i < parts; i++)
        jobs[i] = (scan_t){.wide = wide, .x = x, .cfg = cfg, .cfg1 = cfg1, .T = T, .T1 = T1, .b0 = ranges[2 * i],
                           .b1 = ranges[2 * i + 1], .tags = tags, .words = words, .meta = meta, .counts = counts + 16 * i};
    pool_run(run_scan, jobs, sizeof jobs[0], parts);
    for (int i = 0; i < parts; i++) if (jobs[i].rc && !rc) rc = jobs[i].rc;
    return rc;
}

/* tags.code_lengths: Huffman code lengths of the 4 tags from their counts (UNUSED_LEN for a tag that
 * does not occur, 0 when only one does). Merges the two least (count, least tag id) nodes, the order
 * heapq gives there (ids are unique among live nodes, so the order is total), hence the same
 * lengths. Then tags.canonical_codes: codes by (length, tag). */
enum { UNUSED_LEN = 255 };
void fmc_tag_code(const int64_t *counts, int64_t *len, int64_t *code) {
    int64_t c[4], depth[4] = {0, 0, 0, 0};
    int key[4], members[4], live = 0, used = 0;
    for (int t = 0; t < 4; t++) {
        len[t] = UNUSED_LEN;
        code[t] = 0;
        if (counts[t] > 0) { c[live] = counts[t]; key[live] = t; members[live] = 1 << t; live++; used |= 1 << t; }
    }
    if (live == 1) { len[key[0]] = 0; return; }
    while (live > 1) {
        int a = -1, b = -1; /* the least and the next */
        for (int i = 0; i < live; i++) {
            if (a < 0 || c[i] < c[a] || (c[i] == c[a] && key[i] < key[a])) { b = a; a = i; }
            else if (b < 0 || c[i] < c[b] || (c[i] == c[b] && key[i] < key[b])) b = i;
        }
        for (int t = 0; t < 4; t++) if ((members[a] | members[b]) >> t & 1) depth[t]++;
        c[a] += c[b]; key[a] = key[a] < key[b] ? key[a] : key[b]; members[a] |= members[b];
        live--; /* node b leaves: the last live node takes its place */
        c[b] = c[live]; key[b] = key[live]; members[b] = members[live];
    }
    int64_t next = 0, prev = 0;
    for (int L = 0; L <= 3; L++)
        for (int t = 0; t < 4; t++)
            if ((used >> t & 1) && depth[t] == L) {
                next <<= L - prev;
                code[t] = next++;
                prev = L;
            }
    for (int t = 0; t < 4; t++) if (used >> t & 1) len[t] = depth[t];
}

/* The whole VBR encode in one call: scan (fmc_vbr_scan_par), the tag code (fmc_tag_code), layout
 * (fmc_vbr_pack); one crossing from Python instead of two and the code's arithmetic between.
 * counts: parts + 1 rows of 16, the last the parts' sums; len / code: the tag code, as
 * fmc_tag_code. Returns the payload bits, -1 when the scan declines (non-finite input), -2 for a
 * bad part count. */
int64_t fmc_vbr_encode(int wide, const void *x, const int64_t *cfg, const tabs_t *T, const int64_t *cfg1,
                       const tabs_t *T1, const int64_t *ranges, int parts, uint8_t *tags, uint64_t *meta,
                       uint32_t *words, int64_t *counts, int64_t *len, int64_t *code, uint8_t *out) {
    const int rc = fmc_vbr_scan_par(wide, x, cfg, T, cfg1, T1, ranges, parts, tags, meta, words, counts);
    if (rc) return rc == -2 ? -2 : -1;
    int64_t *sum = counts + 16 * parts, lens[4];
    for (int f = 0; f < 16; f++) {
        sum[f] = 0;
        for (int i = 0; i < parts; i++) sum[f] += counts[16 * i + f];
    }
    fmc_tag_code(sum + 8, len, code);
    for (int t = 0; t < 4; t++) lens[t] = len[t] == UNUSED_LEN ? 0 : len[t];
    return fmc_vbr_pack(cfg, tags, meta, words, code, lens, ranges, parts, counts, out);
}

int fmc_abi(void) { return 3; }
