/* Body of native.c, included once per work dtype W (float, double) with suffix SUF. */
#define PASTE2(a, b) a##_##b
#define PASTE(a, b) PASTE2(a, b)
#define FN(name) PASTE(name, SUF)

static inline W FN(val)(uint32_t b, int st) { /* stored pattern -> work value (exact) */
    switch (st) {
    case 0: case 5: return (W)h2f((uint16_t)b);
    case 1: return (W)bf2f((uint16_t)b);
    case 2: return (W)(int16_t)(uint16_t)b;
    case 3: return (W)(int8_t)(uint8_t)b;
    default: return (W)(uint8_t)b;
    }
}

static inline uint32_t FN(bits)(W v, int st) { /* exact stored value -> its pattern */
    switch (st) {
    case 0: case 5: return f2h((float)v);
    case 1: { float f = (float)v; uint32_t u; memcpy(&u, &f, 4); return u >> 16; }
    case 2: return (uint16_t)(int16_t)v;
    case 3: return (uint8_t)(int8_t)v;
    default: return (uint8_t)v;
    }
}

/* dtypes.step: the next stored value above (up) or below v; returns whether it exists */
static inline int FN(step)(W v, int up, int st, W *out) {
    if (st >= 2 && st <= 4) {
        W lo = st == 2 ? -32768 : st == 3 ? -128 : 0, hi = st == 2 ? 32767 : st == 3 ? 127 : 255;
        W o = v + (up ? 1 : -1);
        *out = o;
        return o >= lo && o <= hi;
    }
    uint32_t code = FN(bits)(v, st), mag = code & 0x7FFF;
    int neg = code >= 0x8000, grow = up ? !neg : neg;
    uint32_t nmag = (grow || mag == 0) ? mag + 1 : mag - 1;
    uint32_t ncode = nmag | ((uint32_t)(mag == 0 ? !up : neg) << 15);
    uint32_t em = st == 1 ? 0x7F80 : 0x7C00;
    int ok = (ncode & em) != em;
    *out = FN(val)(ok ? ncode : code, st);
    return ok;
}

/* coder.nudge for one block: endpoints [a, b] to XOR parity sigma */
static inline void FN(nudge)(W *pa, W *pb, int sigma, int st) {
    W a = *pa, b = *pb;
    if ((int)((FN(bits)(a, st) ^ FN(bits)(b, st)) & 1) == sigma) return;
    int pos = b > 0;
    W b_up, a_down;
    int ok_b_up = FN(step)(b, 1, st, &b_up), ok_a_down = FN(step)(a, 0, st, &a_down);
    int mbu = pos && ok_b_up, mad = !pos && ok_a_down;
    W a2 = mad ? a_down : a, b2 = mbu ? b_up : b;
    if (!(mbu || mad)) {
        W b_down, a_up;
        FN(step)(b, 0, st, &b_down);
        FN(step)(a, 1, st, &a_up);
        int alt_a_down = pos && ok_a_down, alt_b_up = !pos && b < 0 && ok_b_up;
        int rest = !alt_a_down && !alt_b_up;
        int in_b = rest && (b_down > a) && (pos == (b_down > 0)), in_a = rest && !in_b;
        a2 = alt_a_down ? a_down : (in_a ? a_up : a2);
        b2 = alt_b_up ? b_up : (in_b ? b_down : b2);
    }
    *pa = a2;
    *pb = b2;
}

/* torch's CPU sum of one contiguous row (cascade_sum, inner reduction): lanes of LL, four
 * partial vectors, tail scalars first; valid for n < 64 * LL (checked by the caller) */
static inline W FN(tsum)(const W *x, int n) {
    enum { LL = TV / sizeof(W) };
    int nvec = n / LL, ilp = nvec / 4;
    W part[4][LL];
    memset(part, 0, sizeof part);
    for (int i = 0; i < ilp; i++)
        for (int k = 0; k < 4; k++)
            for (int l = 0; l < LL; l++) part[k][l] += x[(i * 4 + k) * LL + l];
    for (int i = ilp * 4; i < nvec; i++)
        for (int l = 0; l < LL; l++) part[0][l] += x[i * LL + l];
    for (int k = 1; k < 4; k++)
        for (int l = 0; l < LL; l++) part[0][l] += part[k][l];
    W acc = 0;
    for (int t = nvec * LL; t < n; t++) acc += x[t];
    for (int l = 0; l < LL; l++) acc += part[0][l];
    return acc;
}

/* Lanes hold LANES blocks (SoA): every per-block scalar of the torch path is a vector here and every
 * per-value tensor an array of vectors, so the arithmetic is elementwise, as in torch. */
static inline VW FN(splat)(W s) { VW r; for (int l = 0; l < LANES; l++) r[l] = s; return r; }
static inline VI FN(spliti)(int s) { VI r; for (int l = 0; l < LANES; l++) r[l] = s; return r; }
#if LANES == 8 && defined(FAST_GATHER) /* a float-domain blend: no bypass between compare and select */
static inline VW FN(sel)(VI m, VW a, VW b) { return (VW)_mm256_blendv_ps((__m256)b, (__m256)a, (__m256)m); }
/* min / max as torch's where(v < lo, v, lo): minps returns its second operand unless the first is less */
static inline VW FN(vmin)(VW a, VW b) { return (VW)_mm256_min_ps((__m256)a, (__m256)b); }
static inline VW FN(vmax)(VW a, VW b) { return (VW)_mm256_max_ps((__m256)a, (__m256)b); }
#else
static inline VW FN(sel)(VI m, VW a, VW b) { return (VW)(((VI)a & m) | ((VI)b & ~m)); }
static inline VW FN(vmin)(VW a, VW b) { return FN(sel)(a < b, a, b); }
static inline VW FN(vmax)(VW a, VW b) { return FN(sel)(a > b, a, b); }
#endif
static inline VI FN(seli)(VI m, VI a, VI b) { return (a & m) | (b & ~m); }
static inline int FN(any)(VI m) { for (int l = 0; l < LANES; l++) if (m[l]) return 1; return 0; }

/* torch's sum over the n values of each lane's block (see tsum) */
static inline __attribute__((always_inline)) VW FN(vsum)(const VW *x, int n) {
    enum { LL = TV / sizeof(W) };
    int nvec = n / LL, ilp = nvec / 4;
    VW part[4][LL];
    if (ilp == 0 && nvec > 0) { /* squares are >= +0, so torch's additions of zero partials are exact no-ops */
        for (int l = 0; l < LL; l++) part[0][l] = x[l];
        for (int i = 1; i < nvec; i++)
            for (int l = 0; l < LL; l++) part[0][l] += x[i * LL + l];
        VW acc = FN(splat)(0);
        for (int t = nvec * LL; t < n; t++) acc += x[t];
        for (int l = 0; l < LL; l++) acc += part[0][l];
        return acc;
    }
    if (ilp == 0) memset(part, 0, sizeof part); /* no vectors: the tail alone */
    else /* the first 4 vectors as the partials (0 + x is x, as above): a 2 KiB memset per call at TV 64 cost */
        for (int k = 0; k < 4; k++)          /* 5% of the encoder's time (AVX-512 build, 2026-12-02) */
            for (int l = 0; l < LL; l++) part[k][l] = x[k * LL + l];
    for (int i = 1; i < ilp; i++)
        for (int k = 0; k < 4; k++)
            for (int l = 0; l < LL; l++) part[k][l] += x[(i * 4 + k) * LL + l];
    for (int i = ilp * 4; i < nvec; i++)
        for (int l = 0; l < LL; l++) part[0][l] += x[i * LL + l];
    for (int k = 1; k < 4; k++)
        for (int l = 0; l < LL; l++) part[0][l] += part[k][l];
    VW acc = FN(splat)(0);
    for (int t = nvec * LL; t < n; t++) acc += x[t];
    for (int l = 0; l < LL; l++) acc += part[0][l];
    return acc;
}

/* per lane: table `t1` where `m` holds, else `t0` (row `r` of a tabs_t table array) */
static inline VW FN(pick)(VI m, const double (*tab)[MP], int t1, int t0, int j) {
    return FN(sel)(m, FN(splat)((W)tab[t1][j]), FN(splat)((W)tab[t0][j]));
}

typedef struct { VW e0, e1; VI scale, mode; } FN(win_t);

/* coder.code_blocks for LANES blocks v[0..n) (constant lanes included). P = 2^k (constant
 * after inlining). Writes the winners' indices to idx[i] (VI per value). */
static inline __attribute__((always_inline)) FN(win_t) FN(code_lanes)(
    const VW *v, int n, const int P, const int64_t *cfg, const tabs_t *T, W wa, W wb, VI *idx) {
    VW lo = v[0], hi = v[0], z = FN(splat)(0), zero = FN(splat)(0), one = FN(splat)(1);
    for (int i = 1; i < n; i++) { lo = FN(vmin)(v[i], lo); hi = FN(vmax)(v[i], hi); }
    VI lz = lo == zero, hz0 = hi == zero;
    if (FN(any)(lz | hz0)) { /* a zero endpoint takes the sign of the block's last zero */
        for (int i = 0; i < n; i++) z = FN(sel)(v[i] == zero, v[i], z);
        lo = FN(sel)(lz, z, lo);
        hi = FN(sel)(hz0, z, hi);
    }
    VW span = hi - lo;
    VI cnst = span == zero;
    const int implicit = (int)cfg[C_IMPLICIT], ns = (int)cfg[C_NS], na = implicit ? 2 : ns;
    VW q[NMAX], dd[NMAX], qb[NMAX];
    VW inva = FN(sel)(cnst, one, span) / FN(splat)(wa);
    for (int i = 0; i < n; i++) q[i] = (v[i] - lo) / inva;
    VI up = hi > zero, bi = FN(spliti)(0);
    VW best = zero;
    for (int ca = 0; ca < na; ca++) {
        VW m[MP], f[MP];
        for (int j = 0; j < P; j++) {
            m[j] = implicit && ca ? FN(pick)(up, T->amid, 1, 2, j) : FN(splat)((W)T->amid[ca][j]);
            f[j] = implicit && ca ? FN(pick)(up, T->afrac, 1, 2, j) : FN(splat)((W)T->afrac[ca][j]);
        }
        VW pt[MP]; /* torch's point value f * span + lo per lane, once per point rather than per value */
        for (int j = 0; j < P; j++) pt[j] = f[j] * span + lo;
        for (int i = 0; i < n; i++) {
            VW fs = pt[0];
            for (int j = 0; j < P - 1; j++) fs = FN(sel)(q[i] > m[j], pt[j + 1], fs);
            VW d = fs - v[i];
            dd[i] = d * d;
        }
        VW s = FN(vsum)(dd, n);
        if (ca == 0) best = s;
        VI better = s < best;
        best = FN(sel)(better, s, best);
        bi = FN(seli)(better, FN(spliti)(ca), bi);
    }
    VW blo = one, bhi = one + one, lower[MT], upper[MT];
    VI valid = FN(spliti)(0);
    VI cand = (lo <= zero) & (hi >= zero) & ~cnst;
    if (cfg[C_MODEB] && FN(any)(cand)) { /* a zero and two distinct non-zero values */
        VW inf = FN(splat)((W)INFINITY), nlo = inf, nhi = -inf;
        VI hz = FN(spliti)(0);
        for (int i = 0; i < n; i++) { /* zeros as +-inf: min / max over the non-zero values */
            VI z0 = v[i] == zero;
            hz |= z0;
            VW a = FN(sel)(z0, inf, v[i]), b = FN(sel)(z0, -inf, v[i]);
            nlo = FN(vmin)(a, nlo);
            nhi = FN(vmax)(b, nhi);
        }
        valid = cand & hz & (nlo < nhi);
        blo = FN(sel)(valid, nlo, blo); /* placeholders [1, 2] elsewhere, as in the torch path */
        bhi = FN(sel)(valid, nhi, bhi);
    }
    const int nbc = implicit ? 2 : ns;
    VW bspan = bhi - blo;
    VI bup = bhi > zero;
    if (FN(any)(valid)) {
        VW ub = bspan / FN(splat)(wb), zg = -blo / ub, inf = FN(splat)((W)INFINITY);
        for (int i = 0; i < n; i++) qb[i] = (v[i] - blo) / ub;
        for (int cb = 0; cb < nbc; cb++) {
            VW fg[MP], m[MP], f[MP];
            for (int j = 0; j < P - 1; j++) {
                fg[j] = implicit && cb ? FN(pick)(bup, T->bfg, 1, 2, j) : FN(splat)((W)T->bfg[cb][j]);
                m[j] = implicit && cb ? FN(pick)(bup, T->bmid, 1, 2, j) : FN(splat)((W)T->bmid[cb][j]);
                f[j] = implicit && cb ? FN(pick)(bup, T->bfrac, 1, 2, j) : FN(splat)((W)T->bfrac[cb][j]);
            }
            VW below = -inf, above = fg[0]; /* points.zero_bounds: fg ascending */
            for (int j = 0; j < P - 1; j++) {
                VI lt = fg[j] < zg;
                below = FN(sel)(lt, fg[j], below);
                above = FN(sel)(lt, j + 1 < P - 1 ? fg[j + 1] : inf, above);
            }
            VW lw = (zg + below) / FN(splat)(2), hg = (zg + above) / FN(splat)(2);
            lower[cb] = lw; upper[cb] = hg;
            VW pt[MP];
            for (int j = 0; j < P - 1; j++) pt[j] = f[j] * bspan + blo;
            for (int i = 0; i < n; i++) {
                VW fs = pt[0];
                for (int j = 0; j < P - 2; j++) fs = FN(sel)(qb[i] > m[j], pt[j + 1], fs);
                VI keep = (qb[i] <= lw) | (qb[i] > hg);
                /* torch: (point * keep) - v with keep 1.0 / 0.0; +0 - v squares the same */
                VW d = (VW)((VI)fs & keep) - v[i];
                dd[i] = d * d;
            }
            VW s = FN(sel)(valid, FN(vsum)(dd, n), inf);
            VI better = s < best;
            best = FN(sel)(better, s, best);
            bi = FN(seli)(better, FN(spliti)(na + cb), bi);
        }
    }
    VI isa = bi < FN(spliti)(na), ia0 = bi == FN(spliti)(0), ib0 = bi == FN(spliti)(na);
    VW ma[MP], mb[MP], lw = lower[0], hg = upper[0];
    for (int j = 0; j < P - 1; j++) { /* the winners' tables */
        if (implicit) {
            ma[j] = FN(sel)(ia0, FN(splat)((W)T->amid[0][j]), FN(pick)(up, T->amid, 1, 2, j));
            mb[j] = FN(sel)(ib0, FN(splat)((W)T->bmid[0][j]), FN(pick)(bup, T->bmid, 1, 2, j));
        } else {
            ma[j] = mb[j] = FN(splat)((W)T->amid[0][j]);
            for (int t = 0; t < ns; t++) {
                ma[j] = FN(sel)(bi == FN(spliti)(t), FN(splat)((W)T->amid[t][j]), ma[j]);
                mb[j] = FN(sel)(bi == FN(spliti)(na + t), FN(splat)((W)T->bmid[t][j]), mb[j]);
            }
        }
    }
    if (FN(any)(valid))
        for (int t = 1; t < nbc; t++) {
            VI w = bi == FN(spliti)(na + t);
            lw = FN(sel)(w, lower[t], lw);
            hg = FN(sel)(w, upper[t], hg);
        }
    VI keepall = ~cnst;
    const int any_b = FN(any)(~isa & keepall), any_a = FN(any)(isa & keepall);
    for (int i = 0; i < n; i++) {
        VI ix = FN(spliti)(0), ixb = FN(spliti)(1);
        if (any_a)
            for (int j = 0; j < P - 1; j++) ix -= (VI)(q[i] > ma[j]);
        if (any_b) {
            for (int j = 0; j < P - 2; j++) ixb -= (VI)(qb[i] > mb[j]);
            ixb &= (qb[i] <= lw) | (qb[i] > hg);
            ix = FN(seli)(isa, ix, ixb);
        }
        idx[i] = ix & keepall;
    }
    FN(win_t) r;
    r.e0 = FN(sel)(cnst | isa, lo, bhi);
    r.e1 = FN(sel)(cnst, lo, FN(sel)(isa, hi, blo));
    r.scale = FN(seli)(cnst, FN(spliti)(0), FN(seli)(isa, bi, bi - FN(spliti)(na)));
    r.mode = FN(seli)(cnst, FN(spliti)(0), FN(seli)(isa, FN(spliti)(1), FN(spliti)(2)));
    return r;
}

/* `endpoints: fit` (native_fit.h) on every coded lane: res's endpoints and the indices replaced where
 * they lower the block's error */
static void FN(fit_lanes)(const VW *v, int n, int P, const int64_t *cfg, const tabs_t *T, FN(win_t) *res, VI *idx) {
    const int ns = (int)cfg[C_NS], st = (int)cfg[C_ST], wide = sizeof(W) == 8, iterations = (int)cfg[C_FIT];
    double vals[NMAX], fr[MP];
    uint8_t ix[NMAX];
    for (int l = 0; l < LANES; l++) {
        const int mode = (int)res->mode[l], is_b = mode == 2;
        if (!mode) continue;
        const int row = (int)res->scale[l] + ns * is_b;
        for (int j = 0; j < P; j++) fr[j] = (double)(W)T->dtab[row][j];
        for (int i = 0; i < n; i++) { vals[i] = (double)v[i][l]; ix[i] = (uint8_t)idx[i][l]; }
        double lo = is_b ? res->e1[l] : res->e0[l], hi = is_b ? res->e0[l] : res->e1[l];
        fit_block(vals, n, P, fr, is_b, st, wide, &lo, &hi, ix, iterations);
        res->e0[l] = (W)(is_b ? hi : lo);
        res->e1[l] = (W)(is_b ? lo : hi);
        for (int i = 0; i < n; i++) idx[i][l] = ix[i];
    }
}

/* A group of LANES blocks coded with cfg's k (P = 2^k a constant in each branch, so code_lanes
 * specialises) and, where cfg asks for `endpoints: fit`, refined: the winners, indices in idx. */
static inline __attribute__((always_inline)) FN(win_t) FN(code_group)(const VW *v, int n, const int64_t *cfg,
                                                                     const tabs_t *T, VI *idx) {
    const W wa = (W)(double)(1 << cfg[C_EA]), wb = (W)(double)(1 << cfg[C_EB]);
    FN(win_t) res;
    switch (cfg[C_K]) {
    case 1: res = FN(code_lanes)(v, n, 2, cfg, T, wa, wb, idx); break;
    case 2: res = FN(code_lanes)(v, n, 4, cfg, T, wa, wb, idx); break;
    case 3: res = FN(code_lanes)(v, n, 8, cfg, T, wa, wb, idx); break;
    default: res = FN(code_lanes)(v, n, 16, cfg, T, wa, wb, idx); break;
    }
    if (cfg[C_FIT]) FN(fit_lanes)(v, n, 1 << cfg[C_K], cfg, T, &res, idx);
    return res;
}

/* the values of `lanes` consecutive blocks (edge padding by clamping), block position advanced;
 * returns non-zero on a non-finite float */
static inline __attribute__((always_inline)) uint32_t FN(gather)(
    const void *x, const int st, const int64_t *cfg, int lanes, int64_t *pn, int64_t *pc, int64_t *ph, int64_t *pw,
    VW *v) {
    const int64_t C = cfg[C_C], H = cfg[C_H], Wd = cfg[C_W];
    const int bc = (int)cfg[C_BC], bh = (int)cfg[C_BH], bw = (int)cfg[C_BW];
    const int64_t gc = (C + bc - 1) / bc, gh = (H + bh - 1) / bh, gw = (Wd + bw - 1) / bw;
    const uint32_t expm = st == 1 ? 0x7F80 : 0x7C00;
    const int isfloat = st == 0 || st == 1 || st == 5;
    int64_t nn = *pn, ic = *pc, ih = *ph, iw = *pw;
    uint32_t bad = 0;
    for (int l = 0; l < lanes; l++) {
        int tv = 0;
        int64_t cb0 = ic * bc, rb0 = ih * bh, wb0 = iw * bw;
        int inner = cb0 + bc <= C && rb0 + bh <= H && wb0 + bw <= Wd;
        for (int a = 0; a < bc; a++) {
            int64_t ch = cb0 + a < C ? cb0 + a : C - 1;
            for (int y = 0; y < bh; y++) {
                int64_t row = rb0 + y < H ? rb0 + y : H - 1;
                int64_t base = ((nn * C + ch) * H + row) * Wd + wb0;
                if (inner) {
                    for (int c = 0; c < bw; c++) {
                        uint32_t b = load_bits(x, base + c, st);
                        bad |= isfloat && (b & expm) == expm;
                        v[tv++][l] = FN(val)(b, st);
                    }
                } else {
                    for (int c = 0; c < bw; c++) {
                        uint32_t b = load_bits(x, base + (wb0 + c < Wd ? c : Wd - 1 - wb0), st);
                        bad |= isfloat && (b & expm) == expm;
                        v[tv++][l] = FN(val)(b, st);
                    }
                }
            }
        }
        if (++iw == gw) { iw = 0; if (++ih == gh) { ih = 0; if (++ic == gc) { ic = 0; nn++; } } }
    }
    *pn = nn; *pc = ic; *ph = ih; *pw = iw;
    return bad;
}

/* The values of the next `lanes` blocks as v[i] (SoA), block position advanced; *lane_of: the
 * lane of each block. Returns non-zero on a non-finite float. */
static inline __attribute__((always_inline)) uint32_t FN(load_group)(
    const void *x, const int64_t *cfg, int lanes, int64_t *nn, int64_t *ic, int64_t *ih, int64_t *iw, VW *v,
    const int **lane_of) {
    const int st = (int)cfg[C_ST], bc = (int)cfg[C_BC], bh = (int)cfg[C_BH], bw = (int)cfg[C_BW];
    static const int interleaved[8] = {0, 4, 1, 5, 2, 6, 3, 7};
    (void)interleaved; (void)bh; (void)bc; (void)bw;
#if LANES == 8 && defined(FAST_GATHER)
    int64_t bases[8];
    int run;
    if (lanes == 8 && (st == 0 || st == 5) && bc == 1 && (bw == 4 || bw == 8) &&
        (run = bases8(cfg, nn, ic, ih, iw, bases))) {
        if (bw == 4) *lane_of = interleaved;
        return fast_gather(x, st, bases, run == 2, cfg[C_W], bh, bw, (__m256 *)v);
    }
#endif
    switch (st) { /* constant storage code inside: the loads specialise */
    case 0: return FN(gather)(x, 0, cfg, lanes, nn, ic, ih, iw, v);
    case 1: return FN(gather)(x, 1, cfg, lanes, nn, ic, ih, iw, v);
    case 2: return FN(gather)(x, 2, cfg, lanes, nn, ic, ih, iw, v);
    case 3: return FN(gather)(x, 3, cfg, lanes, nn, ic, ih, iw, v);
    case 4: return FN(gather)(x, 4, cfg, lanes, nn, ic, ih, iw, v);
    default: return FN(gather)(x, 5, cfg, lanes, nn, ic, ih, iw, v);
    }
}

/* Encode blocks [b0, b1) (b0 a multiple of 8) into `out` (the whole payload: record i at bit
 * i * r). counts: modes (const, A, B) then non-constant scales. Returns 0, or -1 on a
 * non-finite value (the caller falls back to the torch path, which reports it). */
int FN(fmc_encode)(const void *x, const int64_t *cfg, const tabs_t *T, int64_t b0, int64_t b1, uint8_t *out,
                   int64_t *total) {
    int64_t counts[8] = {0}; /* local: the threads' count rows may share a cache line (false sharing) */
    const int st = (int)cfg[C_ST], k = (int)cfg[C_K], bits = (int)cfg[C_BITS], fb = (int)cfg[C_FB];
    const int implicit = (int)cfg[C_IMPLICIT];
    const int64_t C = cfg[C_C], H = cfg[C_H], Wd = cfg[C_W];
    const int bc = (int)cfg[C_BC], bh = (int)cfg[C_BH], bw = (int)cfg[C_BW], n = bc * bh * bw;
    const int64_t gc = (C + bc - 1) / bc, gh = (H + bh - 1) / bh, gw = (Wd + bw - 1) / bw;
    const int64_t r = 2 * bits + fb + (int64_t)n * k;
    const int rec64 = r == 64 && bits == 16 && n * k == 32;
    bw_t w = {out + b0 * r / 8, 0, 0};
    int64_t t = b0, iw = t % gw; t /= gw;
    int64_t ih = t % gh; t /= gh;
    int64_t ic = t % gc, nn = t / gc;
    VW v[NMAX];
    VI idx[NMAX], words[NMAX];
    static const int in_order[8] = {0, 1, 2, 3, 4, 5, 6, 7};
    const int per = 32 / k, nw = (n + per - 1) / per;
    for (int64_t g0 = b0; g0 < b1; g0 += LANES) {
        int lanes = b1 - g0 < LANES ? (int)(b1 - g0) : LANES;
        const int *lane_of = in_order;
        uint32_t bad = FN(load_group)(x, cfg, lanes, &nn, &ic, &ih, &iw, v, &lane_of);
        if (bad) return -1;
        for (int l = lanes; l < LANES; l++)
            for (int i = 0; i < n; i++) v[i][l] = v[i][lanes - 1];
        FN(win_t) res = FN(code_group)(v, n, cfg, T, idx);
        for (int j = 0; j < nw; j++) { /* indices packed per lane: `per` k-bit fields a word */
            int i0 = j * per, i1 = i0 + per < n ? i0 + per : n;
            VI acc = FN(spliti)(0);
            for (int i = i0; i < i1; i++) acc = (acc << k) | idx[i];
            words[j] = acc;
        }
        VI P0 = FN(spliti)(0), P1 = P0, slow = FN(spliti)(-1); /* endpoint patterns; lanes left to the scalar code */
#if LANES == 8 && defined(FAST_GATHER)
        if (st == 0 || st == 5) { /* float16 patterns of 8 endpoints at once, and the common nudges */
            P0 = (VI)_mm256_cvtepu16_epi32(_mm256_cvtps_ph((__m256)res.e0, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
            P1 = (VI)_mm256_cvtepu16_epi32(_mm256_cvtps_ph((__m256)res.e1, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
            slow = FN(spliti)(0);
            if (implicit) { /* coder.nudge: b up above zero, a down at or below it (patterns) */
                VI isb = res.mode == FN(spliti)(2), one = FN(spliti)(1), em = FN(spliti)(0x7C00);
                VI pa = FN(seli)(isb, P1, P0), pb = FN(seli)(isb, P0, P1);
                VI off = (res.mode != FN(spliti)(0)) & (((pa ^ pb) & one) != res.scale);
                VI pos = FN(sel)(isb, res.e0, res.e1) > FN(splat)(0);
                VI bup = pb + one, amag = pa & FN(spliti)(0x7FFF);
                VI adown = FN(seli)(((pa & FN(spliti)(0x8000)) != FN(spliti)(0)) | (amag == FN(spliti)(0)),
                                    (amag + one) | FN(spliti)(0x8000), pa - one);
                VI mbu = off & pos & ((bup & em) != em), mad = off & ~pos & ((adown & em) != em);
                slow = off & ~(mbu | mad); /* a limit of the dtype: the scalar nudge */
                pb = FN(seli)(mbu, bup, pb);
                pa = FN(seli)(mad, adown, pa);
                P0 = FN(seli)(isb, pb, pa);
                P1 = FN(seli)(isb, pa, pb);
            }
        }
#endif
        for (int blk = 0; blk < lanes; blk++) {
            int l = lane_of[blk];
            W e0 = res.e0[l], e1 = res.e1[l];
            int mode = (int)res.mode[l], sc = (int)res.scale[l];
            uint32_t q0 = (uint32_t)P0[l], q1 = (uint32_t)P1[l];
            if (slow[l]) {
                if (implicit && mode) { /* the scale in the endpoints' parity; a is the lower endpoint */
                    if (mode == 2) FN(nudge)(&e1, &e0, sc, st);
                    else FN(nudge)(&e0, &e1, sc, st);
                }
                q0 = FN(bits)(e0, st);
                q1 = FN(bits)(e1, st);
            }
            counts[mode]++;
            if (mode) counts[3 + sc]++;
            if (rec64) { /* [e0 | e1 | 16 2-bit or 8 4-bit indices] as one big-endian word */
                uint64_t word = ((uint64_t)q0 << 48) | ((uint64_t)q1 << 32) | (uint32_t)words[0][l];
                word = __builtin_bswap64(word);
                memcpy(w.p, &word, 8);
                w.p += 8;
                continue;
            }
            put(&w, q0, bits);
            put(&w, q1, bits);
            put(&w, (uint32_t)sc, fb);
            for (int j = 0; j < nw; j++) put(&w, (uint32_t)words[j][l], (j + 1 < nw ? per : n - j * per) * k);
        }
    }
    put_flush(&w);
    for (int i = 0; i < 8; i++) total[i] += counts[i];
    return 0;
}

/* A block's output elements: value -> the output dtype's element, once per point */
static inline void FN(outputs)(const W *pts, int P, int st, int kind, float qs, uint16_t *o16, uint8_t *o8,
                                float *of) {
    for (int j = 0; j < P; j++) {
        W val = pts[j];
        switch (st) {
        case 0: o16[j] = f2h((float)val); of[j] = h2f(o16[j]); break;
        case 1: o16[j] = f2bf((float)val); break;
        case 2: { W rv = rint(val); rv = rv < -32768 ? -32768 : rv > 32767 ? 32767 : rv; o16[j] = (uint16_t)(int16_t)rv; break; }
        case 3: { W rv = rint(val); rv = rv < -128 ? -128 : rv > 127 ? 127 : rv;
                  o8[j] = (uint8_t)(int8_t)rv; of[j] = (float)(int8_t)rv * qs; break; }
        default: { W rv = rint(val); rv = rv < 0 ? 0 : rv > 255 ? 255 : rv; o8[j] = (uint8_t)rv; break; }
        }
    }
    (void)kind;
}

/* One block's values into the map `out` (as the torch path's from_blocks: edge padding dropped):
 * point pts[ix[i]] for value i, converted once per point to the output element. */
static inline void FN(block_out)(const W *pts, int P, const uint8_t *ix, const int64_t *cfg, int64_t nn, int64_t ic,
                                 int64_t ih, int64_t iw, void *out, float qs) {
    const int st = (int)cfg[C_ST], kind = (int)cfg[C_OUT];
    const int64_t C = cfg[C_C], H = cfg[C_H], Wd = cfg[C_W];
    const int bc = (int)cfg[C_BC], bh = (int)cfg[C_BH], bw = (int)cfg[C_BW];
    const int osize = kind ? 4 : (st >= 3 ? 1 : 2); /* output element bytes */
    uint16_t o16[MP];
    uint8_t o8[MP];
    float of[MP];
    FN(outputs)(pts, P, st, kind, qs, o16, o8, of);
    int64_t cb0 = ic * bc, rb0 = ih * bh, wb0 = iw * bw;
    int wn = wb0 + bw <= Wd ? bw : (int)(Wd - wb0);
    for (int ca = 0; ca < bc; ca++) {
        if (cb0 + ca >= C) break;
        for (int y = 0; y < bh; y++) {
            if (rb0 + y >= H) break;
            int64_t base = ((nn * C + cb0 + ca) * H + rb0 + y) * Wd + wb0;
            const uint8_t *row = ix + (ca * bh + y) * bw;
            if (osize == 2) for (int c = 0; c < wn; c++) ((uint16_t *)out)[base + c] = o16[row[c]];
            else if (osize == 4) for (int c = 0; c < wn; c++) ((float *)out)[base + c] = of[row[c]];
            else for (int c = 0; c < wn; c++) ((uint8_t *)out)[base + c] = o8[row[c]];
        }
    }
}

/* Decode blocks [b0, b1) (b0 a multiple of 8) from the whole payload into the map `out`.
 * Returns 0, 1 (mode B where the method has none) or 2 (scale flag outside the list). */
int FN(fmc_decode)(const uint8_t *payload, int64_t nbytes, const int64_t *cfg, const tabs_t *T, int64_t b0,
                   int64_t b1, void *out, double qscale) {
    const int st = (int)cfg[C_ST], k = (int)cfg[C_K], bits = (int)cfg[C_BITS], fb = (int)cfg[C_FB];
    const int implicit = (int)cfg[C_IMPLICIT], ns = (int)cfg[C_NS], allow_b = (int)cfg[C_MODEB];
    const int P = 1 << k;
    const int64_t C = cfg[C_C], H = cfg[C_H], Wd = cfg[C_W];
    const int bc = (int)cfg[C_BC], bh = (int)cfg[C_BH], bw = (int)cfg[C_BW], n = bc * bh * bw;
    const int64_t gc = (C + bc - 1) / bc, gh = (H + bh - 1) / bh, gw = (Wd + bw - 1) / bw;
    const int64_t r = 2 * bits + fb + (int64_t)n * k;
    const int rec64 = r == 64 && bits == 16 && n * k == 32;
    const float qs = (float)qscale;
    br_t rd = {payload + b0 * r / 8, payload + nbytes, 0, 0};
    int64_t t = b0, iw = t % gw; t /= gw;
    int64_t ih = t % gh; t /= gh;
    int64_t ic = t % gc, nn = t / gc;
    W tab[2 * MT][MP];
    for (int i = 0; i < 2 * ns; i++)
        for (int j = 0; j < P; j++) tab[i][j] = (W)T->dtab[i][j];
    uint8_t ix[NMAX];
    for (int64_t bi = b0; bi < b1; bi++) {
#if LANES == 8 && defined(FAST_GATHER)
        int64_t bases[8];
        int run;
        if (st == 0 && bc == 1 && (bw == 4 || bw == 8) && bi + 8 <= b1 && (run = bases8(cfg, &nn, &ic, &ih, &iw, bases))) {
            /* 8 blocks at once (SoA), see fast_gather */
            int rc = fast_decode8(&rd, &rd, rec64, cfg, &tab[0][0], out, bases, run == 2);
            if (rc) return rc;
            bi += 7;
            continue;
        }
#endif
        uint32_t p0, p1, flag;
        if (rec64) {
            uint64_t word;
            memcpy(&word, rd.p, 8);
            rd.p += 8;
            word = __builtin_bswap64(word);
            p0 = (uint32_t)(word >> 48); p1 = (uint32_t)(word >> 32) & 0xFFFF; flag = 0;
            for (int i = 0; i < n; i++) ix[i] = (uint8_t)((word >> (32 - k * (i + 1))) & (P - 1));
        } else {
            p0 = get(&rd, bits); p1 = get(&rd, bits); flag = get(&rd, fb);
            for (int i = 0; i < n; i++) ix[i] = (uint8_t)get(&rd, k);
        }
        W e0 = FN(val)(p0, st), e1 = FN(val)(p1, st);
        int mb = e0 > e1;
        if (mb && !allow_b) return 1;
        W a = mb ? e1 : e0, b = mb ? e0 : e1;
        int sc;
        if (implicit) sc = (int)((p0 ^ p1) & 1) * (1 + (b <= 0));
        else { sc = (int)flag; if (sc >= ns) return 2; }
        const W *f = tab[sc + ns * mb];
        W pts[MP], span = b - a;
        for (int j = 0; j < P; j++) pts[j] = a + span * f[j];
        if (mb) pts[0] = 0;
        FN(block_out)(pts, P, ix, cfg, nn, ic, ih, iw, out, qs);
        if (++iw == gw) { iw = 0; if (++ih == gh) { ih = 0; if (++ic == gc) { ic = 0; nn++; } } }
    }
    return 0;
}

#undef FN
#undef PASTE
#undef PASTE2
