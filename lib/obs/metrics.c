/* Prometheus registry; see metrics.h.
 *
 * Invariant: families and series are only ever appended (under 'lock') and
 * freed together in bm_metrics_destroy, so a metric pointer handed out once
 * stays valid and updates need no lock. Histogram buckets are stored
 * non-cumulative (one atomic per bucket, the last one is +Inf) and summed at
 * render time, so observe() touches exactly two atomics and the sum. */
#include "obs/metrics.h"

#include "common/err.h"
#include "obs/buf.h"

#include <ctype.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

const double bm_metrics_latency_buckets[] = {
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1, 2.5, 5, 10,
};
const size_t bm_metrics_latency_nbuckets =
    sizeof bm_metrics_latency_buckets / sizeof bm_metrics_latency_buckets[0];

enum kind { KIND_COUNTER, KIND_GAUGE, KIND_HISTOGRAM };

struct bm_counter {
    atomic_uint_fast64_t v;
};

struct bm_gauge {
    atomic_uint_fast64_t bits; /* the double's bit pattern */
};

struct bm_histogram {
    size_t nb;                  /* finite bounds; buckets has nb + 1 slots */
    double *bounds;
    atomic_uint_fast64_t *buckets;
    atomic_uint_fast64_t sum_bits;
};

struct series {
    char *labels;               /* rendered 'k="v",k2="v2"' or "" */
    struct series *next;
    union {
        struct bm_counter c;
        struct bm_gauge g;
        struct bm_histogram h;
    } u;
};

struct family {
    char *name;
    char *help;
    enum kind kind;
    struct series *head, *tail;
    struct family *next;
};

struct bm_metrics {
    pthread_mutex_t lock;       /* guards the lists, not the values */
    struct family *head, *tail;
};

static uint64_t dbl_bits(double d)
{
    uint64_t u;
    memcpy(&u, &d, sizeof u);
    return u;
}

static double bits_dbl(uint64_t u)
{
    double d;
    memcpy(&d, &u, sizeof d);
    return d;
}

struct bm_metrics *bm_metrics_new(void)
{
    struct bm_metrics *m = calloc(1, sizeof *m);
    if (m == NULL)
        return NULL;
    pthread_mutex_init(&m->lock, NULL);
    return m;
}

static void series_free(struct series *s, enum kind kind)
{
    if (kind == KIND_HISTOGRAM) {
        free(s->u.h.bounds);
        free((void *)s->u.h.buckets);
    }
    free(s->labels);
    free(s);
}

void bm_metrics_destroy(struct bm_metrics *m)
{
    if (m == NULL)
        return;
    struct family *f = m->head;
    while (f != NULL) {
        struct family *fn = f->next;
        struct series *s = f->head;
        while (s != NULL) {
            struct series *sn = s->next;
            series_free(s, f->kind);
            s = sn;
        }
        free(f->name);
        free(f->help);
        free(f);
        f = fn;
    }
    pthread_mutex_destroy(&m->lock);
    free(m);
}

static bool valid_metric_name(const char *s)
{
    if (s == NULL || *s == '\0' || isdigit((unsigned char)*s))
        return false;
    for (; *s; s++)
        if (!(isalnum((unsigned char)*s) || *s == '_' || *s == ':') || (unsigned char)*s >= 0x80)
            return false;
    return true;
}

static bool valid_label_name(const char *s)
{
    if (s == NULL || *s == '\0' || isdigit((unsigned char)*s))
        return false;
    for (; *s; s++)
        if (!(isalnum((unsigned char)*s) || *s == '_') || (unsigned char)*s >= 0x80)
            return false;
    return true;
}

static bool forbidden_label(const char *s)
{
    static const char *const ids[] = {"job", "job_id", "subject", "subject_id"};
    for (size_t i = 0; i < sizeof ids / sizeof ids[0]; i++)
        if (strcasecmp(s, ids[i]) == 0)
            return true;
    return false;
}

/* Label values escape backslash, double quote and newline (format 0.0.4). */
static void put_escaped(struct bm_obs_buf *b, const char *s, bool quote)
{
    for (; *s; s++) {
        if (*s == '\\')
            bm_obs_buf_puts(b, "\\\\");
        else if (*s == '\n')
            bm_obs_buf_puts(b, "\\n");
        else if (*s == '"' && quote)
            bm_obs_buf_puts(b, "\\\"");
        else
            bm_obs_buf_append(b, s, 1);
    }
}

/* Validate 'labels' and render them into a malloc'd string (*out). */
static int render_labels(const char *const *labels, char **out, char *err, size_t errlen)
{
    size_t n = 0;
    if (labels != NULL) {
        while (labels[2 * n] != NULL) {
            const char *k = labels[2 * n], *v = labels[2 * n + 1];
            if (n >= BM_METRICS_MAX_LABELS)
                return bm_seterr(err, errlen, BM_EINVAL, "more than %d labels",
                                 BM_METRICS_MAX_LABELS);
            if (!valid_label_name(k) || strncmp(k, "__", 2) == 0 || strcmp(k, "le") == 0)
                return bm_seterr(err, errlen, BM_EINVAL, "invalid label name '%s'", k);
            if (forbidden_label(k))
                return bm_seterr(err, errlen, BM_EINVAL,
                                 "label '%s' is forbidden: job and subject ids "
                                 "are unbounded and must never be labels", k);
            if (v == NULL)
                return bm_seterr(err, errlen, BM_EINVAL, "label '%s' has no value", k);
            for (size_t j = 0; j < n; j++)
                if (strcmp(labels[2 * j], k) == 0)
                    return bm_seterr(err, errlen, BM_EINVAL, "duplicate label '%s'", k);
            n++;
        }
    }
    struct bm_obs_buf b = BM_OBS_BUF_INIT;
    for (size_t i = 0; i < n; i++) {
        if (i > 0)
            bm_obs_buf_append(&b, ",", 1);
        bm_obs_buf_puts(&b, labels[2 * i]);
        bm_obs_buf_puts(&b, "=\"");
        put_escaped(&b, labels[2 * i + 1], true);
        bm_obs_buf_append(&b, "\"", 1);
    }
    *out = bm_obs_buf_take(&b, NULL);
    if (*out == NULL)
        return bm_seterr(err, errlen, BM_ENOMEM, "out of memory");
    return BM_OK;
}

static const char *kind_name(enum kind k)
{
    switch (k) {
    case KIND_COUNTER: return "counter";
    case KIND_GAUGE: return "gauge";
    case KIND_HISTOGRAM: return "histogram";
    }
    return "untyped";
}

static int check_bounds(const double *bounds, size_t nb, char *err, size_t errlen)
{
    if (nb == 0 || nb > BM_METRICS_MAX_BUCKETS)
        return bm_seterr(err, errlen, BM_EINVAL, "histogram needs 1..%d bounds",
                         BM_METRICS_MAX_BUCKETS);
    for (size_t i = 0; i < nb; i++) {
        if (!isfinite(bounds[i]))
            return bm_seterr(err, errlen, BM_EINVAL, "histogram bound %zu is not finite", i);
        if (i > 0 && !(bounds[i] > bounds[i - 1]))
            return bm_seterr(err, errlen, BM_EINVAL,
                             "histogram bounds must be strictly increasing");
    }
    return BM_OK;
}

/* Find or create the series; the caller holds no lock. */
static struct series *registry_get(struct bm_metrics *m, enum kind kind, const char *name,
                                   const char *help, const char *const *labels,
                                   const double *bounds, size_t nb, char *err, size_t errlen)
{
    if (m == NULL) {
        bm_seterr(err, errlen, BM_EINVAL, "no registry");
        return NULL;
    }
    if (!valid_metric_name(name)) {
        bm_seterr(err, errlen, BM_EINVAL, "invalid metric name '%s'", name ? name : "(null)");
        return NULL;
    }
    if (kind == KIND_HISTOGRAM && check_bounds(bounds, nb, err, errlen) != BM_OK)
        return NULL;
    char *lab = NULL;
    if (render_labels(labels, &lab, err, errlen) != BM_OK)
        return NULL;

    struct series *found = NULL;
    pthread_mutex_lock(&m->lock);
    struct family *f = m->head;
    while (f != NULL && strcmp(f->name, name) != 0)
        f = f->next;
    if (f != NULL && f->kind != kind) {
        bm_seterr(err, errlen, BM_ECONFLICT, "metric '%s' is already a %s", name,
                  kind_name(f->kind));
        goto out;
    }
    if (f != NULL) {
        for (struct series *s = f->head; s != NULL; s = s->next) {
            if (strcmp(s->labels, lab) != 0)
                continue;
            if (kind == KIND_HISTOGRAM &&
                (s->u.h.nb != nb || memcmp(s->u.h.bounds, bounds, nb * sizeof *bounds) != 0)) {
                bm_seterr(err, errlen, BM_ECONFLICT,
                          "histogram '%s' is already registered with other bounds", name);
                goto out;
            }
            found = s;
            goto out;
        }
    }
    if (f == NULL) {
        f = calloc(1, sizeof *f);
        char *fname = strdup(name), *fhelp = strdup(help != NULL ? help : "");
        if (f == NULL || fname == NULL || fhelp == NULL) {
            free(f);
            free(fname);
            free(fhelp);
            bm_seterr(err, errlen, BM_ENOMEM, "out of memory");
            goto out;
        }
        f->name = fname;
        f->help = fhelp;
        f->kind = kind;
        /* Linked even if the series below fails: an empty family renders
         * nothing and keeps the code simple. */
        if (m->tail != NULL)
            m->tail->next = f;
        else
            m->head = f;
        m->tail = f;
    }
    struct series *s = calloc(1, sizeof *s);
    if (s == NULL) {
        bm_seterr(err, errlen, BM_ENOMEM, "out of memory");
        goto out;
    }
    if (kind == KIND_HISTOGRAM) {
        s->u.h.nb = nb;
        s->u.h.bounds = malloc(nb * sizeof *bounds);
        s->u.h.buckets = calloc(nb + 1, sizeof *s->u.h.buckets);
        if (s->u.h.bounds == NULL || s->u.h.buckets == NULL) {
            series_free(s, kind);
            bm_seterr(err, errlen, BM_ENOMEM, "out of memory");
            goto out;
        }
        memcpy(s->u.h.bounds, bounds, nb * sizeof *bounds);
        for (size_t i = 0; i <= nb; i++)
            atomic_init(&s->u.h.buckets[i], 0);
        atomic_init(&s->u.h.sum_bits, dbl_bits(0.0));
    } else if (kind == KIND_GAUGE) {
        atomic_init(&s->u.g.bits, dbl_bits(0.0));
    } else {
        atomic_init(&s->u.c.v, 0);
    }
    s->labels = lab;
    lab = NULL;
    if (f->tail != NULL)
        f->tail->next = s;
    else
        f->head = s;
    f->tail = s;
    found = s;
out:
    pthread_mutex_unlock(&m->lock);
    free(lab);
    return found;
}

struct bm_counter *bm_metrics_counter(struct bm_metrics *m, const char *name,
                                      const char *help, const char *const *labels,
                                      char *err, size_t errlen)
{
    struct series *s = registry_get(m, KIND_COUNTER, name, help, labels, NULL, 0, err, errlen);
    return s != NULL ? &s->u.c : NULL;
}

struct bm_gauge *bm_metrics_gauge(struct bm_metrics *m, const char *name,
                                  const char *help, const char *const *labels,
                                  char *err, size_t errlen)
{
    struct series *s = registry_get(m, KIND_GAUGE, name, help, labels, NULL, 0, err, errlen);
    return s != NULL ? &s->u.g : NULL;
}

struct bm_histogram *bm_metrics_histogram(struct bm_metrics *m, const char *name,
                                          const char *help, const char *const *labels,
                                          const double *bounds, size_t nbounds,
                                          char *err, size_t errlen)
{
    if (bounds == NULL && nbounds == 0) {
        bounds = bm_metrics_latency_buckets;
        nbounds = bm_metrics_latency_nbuckets;
    }
    struct series *s = registry_get(m, KIND_HISTOGRAM, name, help, labels, bounds, nbounds,
                                    err, errlen);
    return s != NULL ? &s->u.h : NULL;
}

void bm_counter_inc(struct bm_counter *c)
{
    bm_counter_add(c, 1);
}

void bm_counter_add(struct bm_counter *c, uint64_t n)
{
    if (c != NULL)
        atomic_fetch_add_explicit(&c->v, n, memory_order_relaxed);
}

uint64_t bm_counter_get(const struct bm_counter *c)
{
    return c != NULL ? atomic_load_explicit(&((struct bm_counter *)c)->v, memory_order_relaxed) : 0;
}

void bm_gauge_set(struct bm_gauge *g, double v)
{
    if (g != NULL)
        atomic_store_explicit(&g->bits, dbl_bits(v), memory_order_relaxed);
}

/* Atomic floating-point add: a compare-and-swap loop on the bit pattern. */
static void atomic_add_double(atomic_uint_fast64_t *bits, double delta)
{
    uint64_t old = atomic_load_explicit(bits, memory_order_relaxed);
    while (!atomic_compare_exchange_weak_explicit(bits, &old, dbl_bits(bits_dbl(old) + delta),
                                                  memory_order_relaxed, memory_order_relaxed))
        ;
}

void bm_gauge_add(struct bm_gauge *g, double delta)
{
    if (g != NULL)
        atomic_add_double(&g->bits, delta);
}

double bm_gauge_get(const struct bm_gauge *g)
{
    if (g == NULL)
        return 0.0;
    return bits_dbl(atomic_load_explicit(&((struct bm_gauge *)g)->bits, memory_order_relaxed));
}

void bm_histogram_observe(struct bm_histogram *h, double v)
{
    if (h == NULL)
        return;
    /* Binary search for the first bound >= v; NaN compares false and ends
     * in +Inf. */
    size_t lo = 0, hi = h->nb;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (v <= h->bounds[mid])
            hi = mid;
        else
            lo = mid + 1;
    }
    atomic_fetch_add_explicit(&h->buckets[lo], 1, memory_order_relaxed);
    atomic_add_double(&h->sum_bits, v);
}

uint64_t bm_histogram_count(const struct bm_histogram *h)
{
    if (h == NULL)
        return 0;
    uint64_t n = 0;
    for (size_t i = 0; i <= h->nb; i++)
        n += atomic_load_explicit(&h->buckets[i], memory_order_relaxed);
    return n;
}

static void put_value(struct bm_obs_buf *b, double v)
{
    if (isinf(v))
        bm_obs_buf_puts(b, v > 0 ? "+Inf" : "-Inf");
    else
        bm_obs_buf_double(b, v, "NaN", "+Inf");
}

/* name{labels[,extra]} with the braces left out when there are no labels. */
static void put_series_name(struct bm_obs_buf *b, const char *name, const char *suffix,
                            const char *labels, const char *extra)
{
    bm_obs_buf_puts(b, name);
    bm_obs_buf_puts(b, suffix);
    bool has = labels[0] != '\0';
    if (!has && extra == NULL) {
        bm_obs_buf_append(b, " ", 1);
        return;
    }
    bm_obs_buf_append(b, "{", 1);
    bm_obs_buf_puts(b, labels);
    if (extra != NULL) {
        if (has)
            bm_obs_buf_append(b, ",", 1);
        bm_obs_buf_puts(b, extra);
    }
    bm_obs_buf_puts(b, "} ");
}

static void render_histogram(struct bm_obs_buf *b, const char *name, const struct series *s)
{
    const struct bm_histogram *h = &s->u.h;
    uint64_t cum = 0;
    for (size_t i = 0; i <= h->nb; i++) {
        cum += atomic_load_explicit(&((struct bm_histogram *)h)->buckets[i],
                                    memory_order_relaxed);
        struct bm_obs_buf le = BM_OBS_BUF_INIT;
        bm_obs_buf_puts(&le, "le=\"");
        if (i < h->nb)
            put_value(&le, h->bounds[i]);
        else
            bm_obs_buf_puts(&le, "+Inf");
        bm_obs_buf_append(&le, "\"", 1);
        put_series_name(b, name, "_bucket", s->labels, le.oom ? "" : le.p);
        bm_obs_buf_free(&le);
        bm_obs_buf_printf(b, "%llu\n", (unsigned long long)cum);
    }
    put_series_name(b, name, "_sum", s->labels, NULL);
    put_value(b, bits_dbl(atomic_load_explicit(&((struct bm_histogram *)h)->sum_bits,
                                               memory_order_relaxed)));
    bm_obs_buf_append(b, "\n", 1);
    put_series_name(b, name, "_count", s->labels, NULL);
    bm_obs_buf_printf(b, "%llu\n", (unsigned long long)cum);
}

int bm_metrics_render(struct bm_metrics *m, char **out, size_t *len)
{
    *out = NULL;
    if (len != NULL)
        *len = 0;
    if (m == NULL)
        return BM_EINVAL;
    struct bm_obs_buf b = BM_OBS_BUF_INIT;
    pthread_mutex_lock(&m->lock);
    for (const struct family *f = m->head; f != NULL; f = f->next) {
        if (f->head == NULL)
            continue;
        bm_obs_buf_printf(&b, "# HELP %s ", f->name);
        put_escaped(&b, f->help, false);
        bm_obs_buf_printf(&b, "\n# TYPE %s %s\n", f->name, kind_name(f->kind));
        for (const struct series *s = f->head; s != NULL; s = s->next) {
            switch (f->kind) {
            case KIND_COUNTER:
                put_series_name(&b, f->name, "", s->labels, NULL);
                bm_obs_buf_printf(&b, "%llu\n", (unsigned long long)bm_counter_get(&s->u.c));
                break;
            case KIND_GAUGE:
                put_series_name(&b, f->name, "", s->labels, NULL);
                put_value(&b, bm_gauge_get(&s->u.g));
                bm_obs_buf_append(&b, "\n", 1);
                break;
            case KIND_HISTOGRAM:
                render_histogram(&b, f->name, s);
                break;
            }
        }
    }
    pthread_mutex_unlock(&m->lock);
    *out = bm_obs_buf_take(&b, len);
    return *out != NULL ? BM_OK : BM_ENOMEM;
}
