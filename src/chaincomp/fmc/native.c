/* Fused CPU kernels of the fmc codec's constant-bitrate path (see native.py for why and how).
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
#include <math.h>
#include <stdint.h>
#include <string.h>

#ifndef TV
#define TV 32 /* bytes per torch CPU vector (32 for AVX2 / default, 64 for AVX512) */
#endif
#define MT 4   /* tables per mode at most */
#define MP 16  /* points per table at most */
#define NMAX 512

typedef struct {
    double afrac[MT][MP], amid[MT][MP], bfrac[MT][MP], bmid[MT][MP], bfg[MT][MP], dtab[2 * MT][MP];
} tabs_t;

/* configuration, int64 each */
enum { C_ST, C_N, C_C, C_H, C_W, C_BC, C_BH, C_BW, C_K, C_IMPLICIT, C_MODEB, C_NS, C_FB, C_BITS, C_EA, C_EB,
       C_OUT, C_COUNT };

static inline float h2f(uint16_t b) { _Float16 h; memcpy(&h, &b, 2); return (float)h; }
static inline uint16_t f2h(float f) { _Float16 h = (_Float16)f; uint16_t b; memcpy(&b, &h, 2); return b; }
static inline float bf2f(uint16_t b) { uint32_t u = (uint32_t)b << 16; float f; memcpy(&f, &u, 4); return f; }
static inline uint16_t f2bf(float f) { /* torch's round_to_nearest_even (no NaN here) */
    uint32_t u; memcpy(&u, &f, 4);
    return (uint16_t)((u + (((u >> 16) & 1) + 0x7FFF)) >> 16);
}

/* bit writer / reader, MSB first */
typedef struct { uint8_t *p; uint64_t acc; int n; } bw_t;
static inline void put(bw_t *w, uint32_t v, int width) {
    if (!width) return;
    w->acc = (w->acc << width) | v;
    w->n += width;
    while (w->n >= 8) { w->n -= 8; *w->p++ = (uint8_t)(w->acc >> w->n); }
}
static inline void put_flush(bw_t *w) { if (w->n) *w->p++ = (uint8_t)(w->acc << (8 - w->n)); w->n = 0; }

typedef struct { const uint8_t *p, *end; uint64_t acc; int n; } br_t;
static inline uint32_t get(br_t *r, int width) {
    if (!width) return 0;
    while (r->n < width) { r->acc = (r->acc << 8) | (r->p < r->end ? *r->p++ : 0); r->n += 8; }
    r->n -= width;
    return (uint32_t)(r->acc >> r->n) & ((1u << width) - 1);
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

static uint32_t fast_gather(const void *x, int st, int64_t base, int64_t Wd, int bh, int bw, __m256 *v) {
    __m256i badv = _mm256_setzero_si256();
    for (int y = 0; y < bh; y++) {
        int64_t at = base + y * Wd;
        if (bw == 4) {
            __m256 r0 = ld8(x, at, st, &badv), r1 = ld8(x, at + 8, st, &badv), r2 = ld8(x, at + 16, st, &badv),
                   r3 = ld8(x, at + 24, st, &badv);
            __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
            __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
            v[y * 4 + 0] = _mm256_shuffle_ps(t0, t2, 0x44);
            v[y * 4 + 1] = _mm256_shuffle_ps(t0, t2, 0xEE);
            v[y * 4 + 2] = _mm256_shuffle_ps(t1, t3, 0x44);
            v[y * 4 + 3] = _mm256_shuffle_ps(t1, t3, 0xEE);
        } else {
            __m256 r[8], t[8], s[8];
            for (int j = 0; j < 8; j++) r[j] = ld8(x, at + 8 * j, st, &badv);
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
#endif

#define W float
#define SUF f
#define LANES 8
typedef float vf_t __attribute__((vector_size(32)));
typedef int32_t vfi_t __attribute__((vector_size(32)));
#define VW vf_t
#define VI vfi_t
#include "native_body.h"
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

int fmc_abi(void) { return 1; }
