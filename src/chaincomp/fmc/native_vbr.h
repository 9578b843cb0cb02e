/* Variable-bitrate encoder of native.c, included once per work dtype W after native_body.h.
 *
 * Hand-written for the same reason as the CBR kernel (no library codes ASC; see native.py). The VBR
 * stream is sectioned (all tag planes, then every normal block's [e0 | e1 | flag], then their
 * indices, then the low-index blocks likewise, then one value per constant block), so encoding
 * is two passes: `fmc_vbr_scan` codes blocks (in parallel over block ranges) into per-block
 * fields, `fmc_vbr_pack` lays the sections out. `fmc_vbr_decode` reads the sections side by side. The decisions are codec._vbr_tags': a constant
 * block is zero or const; a block with at most 2^(k-1) distinct values is coded with k-1 bits and
 * kept as "low" only when that decodes back exactly (the decoder's points, rounded to the stored
 * dtype, equal to every value); the rest are normal, coded as in CBR.
 */
#define PASTE2(a, b) a##_##b
#define PASTE(a, b) PASTE2(a, b)
#define FN(name) PASTE(name, SUF)

/* whether lane l's n values take at most d distinct values (== as in torch: -0 == +0). One lane at a time:
 * the blocks asked are few (those whose indices already take at most d values), and a lane's scan stops
 * at its first value past d, where a vector over all lanes ran until every lane was out. */
static inline int FN(few_values)(const VW *v, int n, int d, int l) {
    W seen[MP];
    int cnt = 0;
    for (int i = 0; i < n; i++) {
        const W x = v[i][l];
        int hit = 0;
        for (int j = 0; j < cnt && !hit; j++) hit = x == seen[j];
        if (hit) continue;
        if (cnt == d) return 0;
        seen[cnt++] = x;
    }
    return 1;
}

/* the k-bit indices of each lane as words of 32 / k fields (the last one shorter), as the CBR records */
static inline void FN(index_words)(const VI *ix, int n, int k, VI *words) {
    const int per = 32 / k;
    for (int j = 0, i0 = 0; i0 < n; j++, i0 += per) {
        VI acc = FN(spliti)(0);
        for (int i = i0; i < n && i < i0 + per; i++) acc = (acc << k) | ix[i];
        words[j] = acc;
    }
}

/* the stored patterns of lane l's chosen endpoints (the implicit method's nudge included) */
static inline void FN(lane_patterns)(const FN(win_t) *res, int l, int st, int implicit, uint32_t *q0, uint32_t *q1) {
    W e0 = res->e0[l], e1 = res->e1[l];
    int mode = (int)res->mode[l], sc = (int)res->scale[l];
    if (implicit && mode) {
        if (mode == 2) FN(nudge)(&e1, &e0, sc, st);
        else FN(nudge)(&e0, &e1, sc, st);
    }
    *q0 = FN(bits)(e0, st);
    *q1 = FN(bits)(e1, st);
}

/* the stored value (as W) the decoder writes for work value `val` (dtypes.round_for + cast) */
static inline W FN(stored)(W val, int st) {
    switch (st) {
    case 0: case 5: return (W)h2f(f2h((float)val));
    case 1: return (W)bf2f(f2bf((float)val));
    case 2: { W r = rint(val); return r < -32768 ? -32768 : r > 32767 ? 32767 : r; }
    case 3: { W r = rint(val); return r < -128 ? -128 : r > 127 ? 127 : r; }
    default: { W r = rint(val); return r < 0 ? 0 : r > 255 ? 255 : r; }
    }
}

/* per lane: whether its indices take at most d distinct values (necessary for at most d distinct
 * values: equal values get equal indices), two vector operations a value against few_values' ~20 */
static inline VI FN(few_indices)(const VI *ix, int n, int d) {
    VI used = FN(spliti)(0), one = FN(spliti)(1), r;
    for (int i = 0; i < n; i++) used |= one << ix[i];
    for (int l = 0; l < LANES; l++) r[l] = __builtin_popcountll((uint64_t)used[l]) <= d ? -1 : 0;
    return r;
}

/* Blocks waiting for the k - 1 bit try (`low_batch`): their values as lanes, where they go, and the
 * mode / scale their normal coding was counted under. */
typedef struct {
    VW v[NMAX];
    int64_t b[LANES];
    int mode[LANES], scale[LANES], count;
} FN(low_t);

/* Code the waiting blocks with k - 1 bits; those that decode back exactly (the decoder's points,
 * rounded to the stored dtype, equal to every value) become "low", replacing their normal fields. */
static void FN(low_batch)(FN(low_t) *q, const int64_t *cfg1, const tabs_t *T1, int n, uint8_t *tags, uint64_t *meta,
                          uint32_t *words, int nw, int64_t *counts) {
    const int st = (int)cfg1[C_ST], k1 = (int)cfg1[C_K], implicit = (int)cfg1[C_IMPLICIT], ns = (int)cfg1[C_NS];
    const int P1 = 1 << k1, nw1 = (n + 32 / k1 - 1) / (32 / k1);
    VI ix1[NMAX], wk1[NMAX];
    for (int l = q->count; l < LANES; l++) /* unused lanes repeat the first block */
        for (int i = 0; i < n; i++) q->v[i][l] = q->v[i][0];
    FN(win_t) res1 = FN(code_group)(q->v, n, cfg1, T1, ix1); /* cfg1 asks for no fit: low blocks keep range */
    FN(index_words)(ix1, n, k1, wk1);
    for (int l = 0; l < q->count; l++) {
        uint32_t q0, q1;
        FN(lane_patterns)(&res1, l, st, implicit, &q0, &q1);
        W e0 = FN(val)(q0, st), e1 = FN(val)(q1, st);
        int mb = e0 > e1;
        W a = mb ? e1 : e0, hb = mb ? e0 : e1, span = hb - a, pts[MP];
        int sc = implicit ? (int)((q0 ^ q1) & 1) * (1 + (hb <= 0)) : (int)res1.scale[l];
        for (int j = 0; j < P1; j++) pts[j] = FN(stored)(a + span * (W)T1->dtab[sc + ns * mb][j], st);
        if (mb) pts[0] = 0;
        int exact = 1;
        for (int i = 0; i < n && exact; i++) exact = pts[ix1[i][l]] == q->v[i][l];
        if (!exact) continue;
        const int64_t b = q->b[l];
        counts[q->mode[l]]--; /* no longer normal */
        counts[3 + q->scale[l]]--;
        counts[11]--;
        tags[b] = 2;
        meta[b] = ((uint64_t)q0 << 32) | ((uint64_t)q1 << 16) | (uint64_t)res1.scale[l];
        for (int j = 0; j < nw1; j++) words[b * nw + j] = (uint32_t)wk1[j][l];
        counts[res1.mode[l]]++;
        counts[3 + res1.scale[l]]++;
        counts[10]++;
    }
    q->count = 0;
}

/* Scan blocks [b0, b1): tags[b] (0 zero, 1 const, 2 low, 3 normal), meta[b] = e0 pattern << 32 |
 * e1 pattern << 16 | flag (const: the value's pattern in e0), words[b * nw ...] the indices (k bits,
 * or k - 1 for low blocks) as `index_words`, nw = the words of k-bit indices. cfg1 / T1: the
 * configuration and tables for k - 1 (k >= 2). Every coded block is written as normal first; the
 * few that may be low (at most 2^(k-1) distinct values) wait in batches of LANES for their k - 1 bit
 * try, so that try runs on full vectors (it used to run on every group holding one such block).
 * counts: modes (const, A, B) and scales 3..6 over the coded (low and normal) blocks, tags 8..11.
 * Returns 0, or -1 on a non-finite value. */
int FN(fmc_vbr_scan)(const void *x, const int64_t *cfg, const tabs_t *T, const int64_t *cfg1, const tabs_t *T1,
                     int64_t b0, int64_t b1, uint8_t *tags, uint64_t *meta, uint32_t *words, int64_t *total) {
    int64_t counts[16] = {0}; /* local: the threads' count rows may share a cache line (false sharing) */
    const int st = (int)cfg[C_ST], k = (int)cfg[C_K], implicit = (int)cfg[C_IMPLICIT];
    const int64_t C = cfg[C_C], H = cfg[C_H], Wd = cfg[C_W];
    const int bc = (int)cfg[C_BC], bh = (int)cfg[C_BH], bw = (int)cfg[C_BW], n = bc * bh * bw;
    const int64_t gc = (C + bc - 1) / bc, gh = (H + bh - 1) / bh, gw = (Wd + bw - 1) / bw;
    const int d = k > 1 ? 1 << (k - 1) : 0;
    int64_t t = b0, iw = t % gw; t /= gw;
    int64_t ih = t % gh; t /= gh;
    int64_t ic = t % gc, nn = t / gc;
    VW v[NMAX];
    VI ix[NMAX], wk[NMAX];
    FN(low_t) waiting;
    waiting.count = 0;
    const int nw = (n + 32 / k - 1) / (32 / k);
    static const int in_order[8] = {0, 1, 2, 3, 4, 5, 6, 7};
    for (int64_t g0 = b0; g0 < b1; g0 += LANES) {
        int lanes = b1 - g0 < LANES ? (int)(b1 - g0) : LANES;
        const int *lane_of = in_order;
        if (FN(load_group)(x, cfg, lanes, &nn, &ic, &ih, &iw, v, &lane_of)) return -1;
        for (int l = lanes; l < LANES; l++)
            for (int i = 0; i < n; i++) v[i][l] = v[i][lanes - 1];
        FN(win_t) res = FN(code_group)(v, n, cfg, T, ix);
        FN(index_words)(ix, n, k, wk);
        VI low = FN(spliti)(0);
        if (d) low = res.mode != FN(spliti)(0);
        if (FN(any)(low)) low &= FN(few_indices)(ix, n, d);
        for (int l = 0; l < LANES; l++)
            if (low[l]) low[l] = FN(few_values)(v, n, d, l) ? -1 : 0;
        for (int blk = 0; blk < lanes; blk++) {
            const int l = lane_of[blk];
            const int64_t b = g0 + blk;
            uint32_t *o = words + b * nw;
            uint32_t q0, q1;
            if (!res.mode[l]) { /* constant: zero or const, its value in e0 */
                W e0 = res.e0[l];
                tags[b] = e0 == 0 ? 0 : 1;
                meta[b] = (uint64_t)FN(bits)(e0, st) << 32;
                counts[8 + tags[b]]++;
                continue;
            }
            FN(lane_patterns)(&res, l, st, implicit, &q0, &q1);
            tags[b] = 3;
            meta[b] = ((uint64_t)q0 << 32) | ((uint64_t)q1 << 16) | (uint64_t)res.scale[l];
            for (int j = 0; j < nw; j++) o[j] = (uint32_t)wk[j][l];
            counts[res.mode[l]]++;
            counts[3 + res.scale[l]]++;
            counts[11]++;
            if (low[l]) { /* may decode exactly with k - 1 bits: wait for a full batch */
                const int s = waiting.count++;
                for (int i = 0; i < n; i++) waiting.v[i][s] = v[i][l];
                waiting.b[s] = b;
                waiting.mode[s] = (int)res.mode[l];
                waiting.scale[s] = (int)res.scale[l];
                if (waiting.count == LANES) FN(low_batch)(&waiting, cfg1, T1, n, tags, meta, words, nw, counts);
            }
        }
    }
    if (waiting.count) FN(low_batch)(&waiting, cfg1, T1, n, tags, meta, words, nw, counts);
    for (int i = 0; i < 16; i++) total[i] += counts[i];
    return 0;
}

/* reader positioned at bit `at` of the payload */
static inline br_t FN(reader_at)(const uint8_t *payload, int64_t nbytes, int64_t at);

/* blocks [b0, b1) of a VBR payload; at[5]: where the part's fields start in the five sections
 * (normal meta, normal indices, low meta, low indices, const values) */
typedef struct {
    const uint8_t *payload;
    int64_t nbytes, b0, b1, at[5];
    const int64_t *cfg, *cfg1;
    const tabs_t *T, *T1;
    const uint8_t *tags;
    void *out;
    float qs;
    int rc;
} FN(vbr_part_t);

/* whether the 8 tags from t on are all normal (3) */
static inline int FN(normal8)(const uint8_t *t) {
    uint64_t w;
    memcpy(&w, t, 8);
    return w == 0x0303030303030303ull;
}

static int FN(vbr_blocks)(const FN(vbr_part_t) *j) {
    const int64_t *cfg = j->cfg, *cfg1 = j->cfg1;
    const uint8_t *payload = j->payload, *tags = j->tags;
    const int64_t nbytes = j->nbytes;
    void *out = j->out;
    const float qs = j->qs;
    const int st = (int)cfg[C_ST], k = (int)cfg[C_K], bits = (int)cfg[C_BITS], fb = (int)cfg[C_FB];
    const int implicit = (int)cfg[C_IMPLICIT], ns = (int)cfg[C_NS];
    const int64_t C = cfg[C_C], H = cfg[C_H], Wd = cfg[C_W];
    const int bc = (int)cfg[C_BC], bh = (int)cfg[C_BH], bw = (int)cfg[C_BW], n = bc * bh * bw;
    const int64_t gc = (C + bc - 1) / bc, gh = (H + bh - 1) / bh, gw = (Wd + bw - 1) / bw;
    br_t rnm = FN(reader_at)(payload, nbytes, j->at[0]), rni = FN(reader_at)(payload, nbytes, j->at[1]),
         rlm = FN(reader_at)(payload, nbytes, j->at[2]), rli = FN(reader_at)(payload, nbytes, j->at[3]),
         rcv = FN(reader_at)(payload, nbytes, j->at[4]);
    W tab[2][2 * MT][MP];
    for (int i = 0; i < 2 * ns; i++)
        for (int q = 0; q < MP; q++) { tab[0][i][q] = (W)j->T->dtab[i][q]; tab[1][i][q] = (W)j->T1->dtab[i][q]; }
    static const uint8_t zeros[NMAX];
    uint8_t ix[NMAX];
    int64_t t0 = j->b0, iw = t0 % gw; t0 /= gw;
    int64_t ih = t0 % gh; t0 /= gh;
    int64_t ic = t0 % gc, nn = t0 / gc;
    for (int64_t b = j->b0; b < j->b1; b++) {
        const int t = tags[b];
        W pts[MP];
#if LANES == 8 && defined(FAST_GATHER)
        int64_t bases[8];
        int run;
        if (t == 3 && st == 0 && bc == 1 && (bw == 4 || bw == 8) && b + 8 <= j->b1 && FN(normal8)(tags + b) &&
            (run = bases8(cfg, &nn, &ic, &ih, &iw, bases))) { /* 8 normal blocks at once, as CBR's fast_decode8 */
            int rc = fast_decode8(&rnm, &rni, 0, cfg, &tab[0][0][0], out, bases, run == 2);
            if (rc) return rc;
            b += 7;
            continue;
        }
#endif
        if (t <= 1) { /* zero, or one stored value */
            pts[0] = t ? FN(val)(get(&rcv, bits), st) : 0;
            FN(block_out)(pts, 1, zeros, cfg, nn, ic, ih, iw, out, qs);
        } else {
            const int low = t == 2, kk = low ? k - 1 : k, P = 1 << kk;
            br_t *mr = low ? &rlm : &rnm, *ir = low ? &rli : &rni;
            uint32_t p0 = get(mr, bits), p1 = get(mr, bits), flag = get(mr, fb);
            for (int i = 0; i < n; i++) ix[i] = (uint8_t)get(ir, kk);
            W e0 = FN(val)(p0, st), e1 = FN(val)(p1, st);
            int mb = e0 > e1;
            if (mb && !(low ? cfg1 : cfg)[C_MODEB]) return 1;
            W a = mb ? e1 : e0, hb = mb ? e0 : e1, span = hb - a;
            int sc;
            if (implicit) sc = (int)((p0 ^ p1) & 1) * (1 + (hb <= 0));
            else { sc = (int)flag; if (sc >= ns) return 2; }
            const W *f = tab[low][sc + ns * mb];
            for (int q = 0; q < P; q++) pts[q] = a + span * f[q];
            if (mb) pts[0] = 0;
            FN(block_out)(pts, P, ix, cfg, nn, ic, ih, iw, out, qs);
        }
        if (++iw == gw) { iw = 0; if (++ih == gh) { ih = 0; if (++ic == gc) { ic = 0; nn++; } } }
    }
    return 0;
}

static void *FN(vbr_run)(void *p) {
    FN(vbr_part_t) *j = p;
    j->rc = FN(vbr_blocks)(j);
    return 0;
}

/* reader positioned at bit `at` of the payload */
static inline br_t FN(reader_at)(const uint8_t *payload, int64_t nbytes, int64_t at) {
    br_t r = {payload + (at >> 3), payload + nbytes, 0, 0};
    get(&r, (int)(at & 7));
    return r;
}

/* Decode a VBR payload of `payload_bits` bits into the map `out` (the torch path's decode_tags,
 * then the sections read side by side, block after block). code / len: the tag code (len 255:
 * unused; 0: the only tag, no planes); cfg1 / T1: k - 1's; tags, pre: nb bytes of scratch each;
 * blocks split over `parts` threads once the tags are read.
 * Returns 0, or (the torch path then reports the error) 1 / 2 as fmc_decode, 3 an invalid tag,
 * 4 section sizes that disagree with payload_bits, 5 low blocks with 1-bit indices. */
int FN(fmc_vbr_decode)(const uint8_t *payload, int64_t payload_bits, const int64_t *cfg, const tabs_t *T,
                       const int64_t *cfg1, const tabs_t *T1, const int64_t *code, const int64_t *len, uint8_t *tags,
                       uint8_t *pre, void *out, double qscale, int parts) {
    const int k = (int)cfg[C_K], bits = (int)cfg[C_BITS], fb = (int)cfg[C_FB];
    const int64_t C = cfg[C_C], H = cfg[C_H], Wd = cfg[C_W];
    const int bc = (int)cfg[C_BC], bh = (int)cfg[C_BH], bw = (int)cfg[C_BW], n = bc * bh * bw;
    const int64_t gc = (C + bc - 1) / bc, gh = (H + bh - 1) / bh, gw = (Wd + bw - 1) / bw;
    const int64_t nb = cfg[C_N] * gc * gh * gw, nbytes = (payload_bits + 7) / 8, mbits = 2 * bits + fb;
    const float qs = (float)qscale;
    int only = -1, maxlen = 0;
    for (int t = 0; t < 4; t++) {
        if (len[t] == 0) only = t;
        if (len[t] != 255 && len[t] > maxlen) maxlen = (int)len[t];
    }
    int64_t pos = 0, cnt[4] = {0, 0, 0, 0};
    if (only >= 0) memset(tags, only, nb);
    else {
        br_t rd = {payload, payload + nbytes, 0, 0};
        memset(tags, 255, nb);
        memset(pre, 0, nb);
        for (int j = 0; j < maxlen; j++)
            for (int64_t b = 0; b < nb; b++) {
                if (tags[b] != 255) continue;
                pre[b] = (uint8_t)((pre[b] << 1) | get(&rd, 1));
                pos++;
                for (int t = 0; t < 4; t++)
                    if (len[t] == j + 1 && code[t] == pre[b]) tags[b] = (uint8_t)t;
            }
    }
    for (int64_t b = 0; b < nb; b++) {
        if (tags[b] > 3) return 3;
        cnt[tags[b]]++;
    }
    if (cnt[2] && k == 1) return 5;
    const int64_t nm = pos, ni = nm + cnt[3] * mbits, lm = ni + cnt[3] * n * k, li = lm + cnt[2] * mbits,
                  cv = li + cnt[2] * n * (k - 1);
    if (cv + cnt[1] * bits != payload_bits) return 4;
    /* parts of about equal block counts; each starts where the earlier blocks' fields end */
    FN(vbr_part_t) jobs[MAX_PARTS];
    int rc = 0;
    if (parts < 1 || parts > MAX_PARTS) return -2;
    int64_t at[5] = {nm, ni, lm, li, cv}, b = 0;
    for (int i = 0; i < parts; i++) {
        int64_t b1 = i + 1 == parts ? nb : nb * (i + 1) / parts;
        jobs[i] = (FN(vbr_part_t)){.payload = payload, .nbytes = nbytes, .b0 = b, .b1 = b1, .cfg = cfg, .cfg1 = cfg1,
                                  .T = T, .T1 = T1, .tags = tags, .out = out, .qs = qs};
        memcpy(jobs[i].at, at, sizeof at);
        for (; b < b1; b++) {
            const int t = tags[b];
            if (t == 1) at[4] += bits;
            else if (t >= 2) { at[t == 2 ? 2 : 0] += mbits; at[t == 2 ? 3 : 1] += (int64_t)n * (t == 2 ? k - 1 : k); }
        }
    }
    pool_run(FN(vbr_run), jobs, sizeof jobs[0], parts);
    for (int i = 0; i < parts; i++) if (jobs[i].rc && !rc) rc = jobs[i].rc;
    return rc;
}

#undef FN
#undef PASTE
#undef PASTE2
