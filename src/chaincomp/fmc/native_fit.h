/* Least-squares endpoints (`endpoints: fit`) in the native kernel: endpoints.fit_endpoints for one
 * block, operation for operation (float64 sums in torch's order, `tsum_d`; the points in the work
 * dtype; the stored dtype's rounding), so the native and torch encoders write the same bytes.
 * Included by native.c after both bodies (it needs tsum_d and stored_d); `fit_block` is declared
 * before them.
 *
 * Hand-written for the reason of the rest of the kernel (no library codes ASC); this step is the
 * refinement of BC1 texture compressors: for fixed indices the decoded value a (1 - f) + b f is
 * linear in the endpoints (a, b), a 2x2 least-squares system per block.
 */

/* the decoder's points for range [a, b] (work dtype: float unless wide), rounded to the stored
 * dtype; mode B's point 0 is the exact zero */
static void fit_points(double a, double b, const double *fr, int P, int is_b, int st, int wide, double *pts) {
    for (int j = 0; j < P; j++) {
        double p;
        if (wide) p = a + (b - a) * fr[j];
        else {
            float fa = (float)a, span = (float)b - fa;
            p = (double)(fa + span * (float)fr[j]);
        }
        pts[j] = stored_d(p, st);
    }
    if (is_b) pts[0] = 0.0;
}

/* the squared error of the values on points pts[ix[i]], summed in torch's order */
static double fit_error(const double *v, int n, const double *pts, const uint8_t *ix) {
    double sq[NMAX];
    for (int i = 0; i < n; i++) {
        double d = pts[ix[i]] - v[i];
        sq[i] = d * d;
    }
    return tsum_d(sq, n);
}

/* an endpoint from the normal equations: to the work dtype, then the stored dtype */
static double fit_endpoint(double x, int st, int wide) { return stored_d(wide ? x : (double)(float)x, st); }

/* Refine one coded block: v[n] its values, fr[P] its (mode, scale) row of the point table in the work
 * dtype, is_b its mode; *lo, *hi the range endpoints and ix[n] the indices, replaced where the
 * block's error goes down (at most `iterations` passes, stopping at the first that does not). */
static void fit_block(const double *v, int n, int P, const double *fr, int is_b, int st, int wide, double *lo,
                      double *hi, uint8_t *ix, int iterations) {
    double pts[MP], uu[NMAX], uw[NMAX], ww[NMAX], uv[NMAX], wv[NMAX], fi[NMAX], wi[NMAX];
    uint8_t nix[NMAX];
    int32_t cnt[NMAX];
    fit_points(*lo, *hi, fr, P, is_b, st, wide, pts);
    double err = fit_error(v, n, pts, ix);
    if (err == 0) return; /* exact already: no pass can lower it */
    for (int it = 0; it < iterations; it++) {
        for (int i = 0; i < n; i++) { /* the gathers apart, so that the products below vectorise */
            fi[i] = fr[ix[i]];
            wi[i] = (ix[i] > 0 || !is_b) ? 1.0 : 0.0; /* mode B: values on the zero point do not pull the range */
        }
        for (int i = 0; i < n; i++) {
            double f = fi[i], w = wi[i], u = 1 - f;
            uu[i] = w * u * u; uw[i] = w * u * f; ww[i] = w * f * f; uv[i] = w * u * v[i]; wv[i] = w * f * v[i];
        }
        double suu = tsum_d(uu, n), suw = tsum_d(uw, n), sww = tsum_d(ww, n), suv = tsum_d(uv, n),
               swv = tsum_d(wv, n);
        double det = suu * sww - suw * suw, ss = suu * sww;
        if (!(det > 1e-12 * (ss > 1e-300 ? ss : 1e-300))) return; /* every value on one point: no fit */
        double a = fit_endpoint((sww * suv - suw * swv) / det, st, wide);
        double b = fit_endpoint((suu * swv - suw * suv) / det, st, wide);
        if (!(isfinite(a) && isfinite(b) && a < b)) return;
        fit_points(a, b, fr, P, is_b, st, wide, pts);
        double srt[MP], mids[MP];
        int order[MP];
        for (int j = 0; j < P; j++) { /* stable insertion sort (mode B's zero may sit anywhere) */
            int q = j;
            while (q > 0 && srt[q - 1] > pts[j]) { srt[q] = srt[q - 1]; order[q] = order[q - 1]; q--; }
            srt[q] = pts[j];
            order[q] = j;
        }
        for (int j = 0; j + 1 < P; j++) mids[j] = (srt[j] + srt[j + 1]) / 2;
        for (int i = 0; i < n; i++) cnt[i] = 0; /* searchsorted (left): the midpoints below each value */
        for (int j = 0; j + 1 < P; j++)
            for (int i = 0; i < n; i++) cnt[i] += mids[j] < v[i];
        for (int i = 0; i < n; i++) nix[i] = (uint8_t)order[cnt[i]];
        double nerr = fit_error(v, n, pts, nix);
        if (!(nerr < err)) return;
        *lo = a;
        *hi = b;
        err = nerr;
        memcpy(ix, nix, (size_t)n);
    }
}
