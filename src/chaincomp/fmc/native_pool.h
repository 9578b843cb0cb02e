/* Worker threads of native.c: `pool_run` runs fn(jobs + i * stride) for the parts i of one call,
 * part 0 on the caller's thread and the others on persistent workers, each pinned to a CPU other
 * than the caller's.
 *
 * Why not a thread per call (as before): measured on the 2-vCPU KVM machine, a new thread mostly
 * started on its parent's CPU and waited for it (9 of 10 two-part calls ran one part after the
 * other), and each thread's exit released its stack pages (10 page faults and a TLB shootdown per
 * call), which slowed both parts by 1.3-1.6x when they did overlap. Why not OpenMP: torch ships its
 * own runtime; a second one in the process would compete with it. Workers spin ~100 us after a
 * part (back-to-back maps find them awake), then sleep on a futex. One caller at a time owns the
 * pool; a concurrent caller, a process forked from one that had workers, or a system without
 * futexes starts threads per call as before.
 */
#ifdef __linux__
#include <linux/futex.h>
#include <sched.h>
#include <stdatomic.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#define POOL 1
#endif

typedef void *(*part_fn)(void *);

/* Threads per call (the fallback): part 0 on the caller's, a part whose thread cannot start too. */
static void run_threads(part_fn fn, char *jobs, size_t stride, int parts) {
    pthread_t th[MAX_PARTS];
    int started[MAX_PARTS] = {0};
    for (int i = 1; i < parts; i++) started[i] = pthread_create(&th[i], 0, fn, jobs + i * stride) == 0;
    fn(jobs);
    for (int i = 1; i < parts; i++) {
        if (started[i]) pthread_join(th[i], 0);
        else fn(jobs + i * stride);
    }
}

#ifdef POOL
#define SPIN_US 100

/* Each worker has its own start word, bumped only for a call that gives it a part, and the caller waits
 * for every part it handed out: a worker never wakes for a call that has no part for it, so it never
 * reads the fields of a later call (one shared word let an idle worker that woke late run a part of the
 * next call twice). */
static struct {
    pthread_mutex_t lock;        /* held by the caller that owns the pool for one call */
    atomic_uint go[MAX_PARTS];   /* worker i's start word (its futex word) */
    atomic_int asleep[MAX_PARTS];
    atomic_uint left;            /* worker parts not finished (futex word of the caller) */
    atomic_int waiting;
    part_fn fn;
    char *jobs;
    size_t stride;
    int workers;
    pid_t pid;                   /* the process the workers belong to */
    pthread_t th[MAX_PARTS];
    int cpu[MAX_PARTS];          /* the CPU worker i is pinned to, -1 none */
    unsigned seen0[MAX_PARTS];
} pool = {.lock = PTHREAD_MUTEX_INITIALIZER};

static long futex(atomic_uint *word, int op, unsigned val) {
    return syscall(SYS_futex, (unsigned *)word, op, val, NULL, NULL, 0);
}

static inline double pool_us(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

static inline void relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

/* spin up to SPIN_US for *word to leave `val`, then sleep on it; returns the new value */
static unsigned wait_change(atomic_uint *word, unsigned val, atomic_int *sleepers) {
    unsigned now;
    double until = 0;
    for (int i = 0;; i++) {
        if ((now = atomic_load(word)) != val) return now;
        relax();
        if ((i & 255) == 255) {
            double t = pool_us();
            if (until == 0) until = t + SPIN_US;
            else if (t > until) break;
        }
    }
    for (;;) {
        atomic_fetch_add(sleepers, 1);
        if ((now = atomic_load(word)) == val) futex(word, FUTEX_WAIT_PRIVATE, val);
        atomic_fetch_sub(sleepers, 1);
        if ((now = atomic_load(word)) != val) return now;
    }
}

static void *pool_worker(void *arg) {
    const int id = (int)(intptr_t)arg;
    unsigned seen = pool.seen0[id];
    for (;;) {
        seen = wait_change(&pool.go[id], seen, &pool.asleep[id]);
        pool.fn(pool.jobs + id * pool.stride);
        if (atomic_fetch_sub(&pool.left, 1) == 1 && atomic_load(&pool.waiting))
            futex(&pool.left, FUTEX_WAKE_PRIVATE, 1);
    }
    return 0;
}

/* the CPU for worker i: the i-th allowed CPU after `here` (the caller's), cycling; -1 for none */
static int worker_cpu(const cpu_set_t *allowed, int count, int here, int i) {
    if (count < 2 || here < 0) return -1;
    int want = 1 + (i - 1) % (count - 1), seen = 0;
    for (int c = 0; c < CPU_SETSIZE; c++)
        if (CPU_ISSET(c, allowed) && c != here && ++seen == want) return c;
    return -1;
}

static void pin(pthread_t th, int cpu) {
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(cpu, &one);
    pthread_setaffinity_np(th, sizeof one, &one);
}

static void pool_run(part_fn fn, void *jobs_, size_t stride, int parts) {
    char *jobs = jobs_;
    if (parts <= 1) { fn(jobs); return; }
    if (pthread_mutex_trylock(&pool.lock)) { run_threads(fn, jobs, stride, parts); return; }
    if (pool.pid != getpid()) { /* first call, or a forked child: no workers of ours run here */
        pool.pid = getpid();
        pool.workers = 0;
    }
    cpu_set_t allowed;
    int here = sched_getcpu(), count = sched_getaffinity(0, sizeof allowed, &allowed) ? 0 : CPU_COUNT(&allowed);
    while (pool.workers + 1 < parts) { /* start the missing workers (they wait for their word to move) */
        int id = pool.workers + 1;
        atomic_store(&pool.asleep[id], 0);
        pool.seen0[id] = atomic_load(&pool.go[id]);
        if (pthread_create(&pool.th[id], 0, pool_worker, (void *)(intptr_t)id)) break;
        pool.cpu[id] = -1;
        pool.workers = id;
    }
    int on_pool = pool.workers + 1 < parts ? pool.workers + 1 : parts; /* parts 1..on_pool-1 on workers */
    for (int i = 1; i < on_pool; i++) {
        int c = worker_cpu(&allowed, count, here, i);
        if (c >= 0 && c != pool.cpu[i]) { pin(pool.th[i], c); pool.cpu[i] = c; }
    }
    pool.fn = fn;
    pool.jobs = jobs;
    pool.stride = stride;
    atomic_store(&pool.left, (unsigned)(on_pool - 1));
    for (int i = 1; i < on_pool; i++) {
        atomic_fetch_add(&pool.go[i], 1);
        if (atomic_load(&pool.asleep[i])) futex(&pool.go[i], FUTEX_WAKE_PRIVATE, 1);
    }
    fn(jobs);
    for (int i = on_pool; i < parts; i++) fn(jobs + i * stride); /* workers that could not start */
    unsigned left;
    while ((left = atomic_load(&pool.left)) != 0) wait_change(&pool.left, left, &pool.waiting);
    pthread_mutex_unlock(&pool.lock);
}
#else
static void pool_run(part_fn fn, void *jobs, size_t stride, int parts) { run_threads(fn, jobs, stride, parts); }
#endif
