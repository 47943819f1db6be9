/* `biomatch-replay run` and `sweep`: drive the engine (engine.h) and report.
 *
 *   run FILE --rate R | --speedup X     one step
 *   run FILE --max --p99 MS             the highest rate whose p99 stays under
 *                                       MS with nothing lost or failed: double
 *                                       the rate from --start-rate until a step
 *                                       fails, then bisect, each step lasting
 *                                       --duration (default 10 s)
 *   sweep FILE --rates A,B,C --png OUT  one step per rate, a table, a .dat
 *                                       file and a latency-vs-throughput plot
 *
 * A step is "sustained" when p99 <= bound, nothing was lost or failed, and
 * the results kept up with the offered rate (throughput >= 90% of it). */
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "engine.h"

struct run_flags {
    struct rp_kafka k;
    const char *rate, *speedup, *max, *duration, *warmup, *p99, *json, *hist_out, *keep_ids;
    const char *jobs_topic, *results_topic, *grace, *accept, *start_rate, *max_rate;
    const char *bisect, *rates, *png, *dat;
};

static double ms(uint64_t us)
{
    return (double)us / 1000.0;
}

static int sustained(const struct rp_step_result *r, double bound_ms)
{
    return r->done > 0 && r->lost == 0 && r->errors == 0 &&
           ms(bm_hist_percentile(r->hist, 99)) <= bound_ms && r->throughput >= 0.9 * r->target_rate;
}

static void print_table(FILE *f, const struct rp_step_result *r)
{
    const struct bm_hist *h = r->hist;
    static const double ps[] = { 50, 90, 99, 99.9 };
    static const char *const names[] = { "p50", "p90", "p99", "p99.9" };
    fprintf(f, "\nend-to-end latency (ms, from the scheduled send time), %llu results\n",
            (unsigned long long)h->total);
    for (size_t i = 0; i < 4; i++)
        fprintf(f, "  %-8s %10.2f\n", names[i], ms(bm_hist_percentile(h, ps[i])));
    fprintf(f, "  %-8s %10.2f\n  %-8s %10.2f\n", "max", ms(h->total ? h->max : 0), "mean",
            bm_hist_mean(h) / 1000.0);
    fprintf(f, "\ntarget %.1f jobs/s, published %.1f jobs/s, throughput %.1f results/s\n",
            r->target_rate, r->publish_rate, r->throughput);
    fprintf(f, "jobs sent %llu: done %llu (partial %llu), errors %llu (timeouts %llu), lost %llu; "
               "late sends %llu\n",
            (unsigned long long)r->sent, (unsigned long long)r->done,
            (unsigned long long)r->partial, (unsigned long long)r->errors,
            (unsigned long long)r->timeouts, (unsigned long long)r->lost,
            (unsigned long long)r->late_sends);
    if (r->rank1_total + r->nonmated > 0)
        fprintf(f, "accuracy: rank-1 %llu/%llu = %.4f over mated jobs; false matches %llu "
                   "(%llu non-mated jobs)\n",
                (unsigned long long)r->rank1_hits, (unsigned long long)r->rank1_total,
                r->rank1_total ? (double)r->rank1_hits / (double)r->rank1_total : 0.0,
                (unsigned long long)r->false_matches, (unsigned long long)r->nonmated);
}

/* The OpenMessaging-Benchmark-style fields of one step. */
static cJSON *step_json(const struct rp_step_result *r)
{
    const struct bm_hist *h = r->hist;
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "targetRate", r->target_rate);
    cJSON_AddNumberToObject(o, "publishRate", r->publish_rate);
    cJSON_AddNumberToObject(o, "throughput", r->throughput);
    cJSON_AddNumberToObject(o, "endToEndLatencyAvg", bm_hist_mean(h) / 1000.0);
    cJSON_AddNumberToObject(o, "endToEndLatency50pct", ms(bm_hist_percentile(h, 50)));
    cJSON_AddNumberToObject(o, "endToEndLatency90pct", ms(bm_hist_percentile(h, 90)));
    cJSON_AddNumberToObject(o, "endToEndLatency99pct", ms(bm_hist_percentile(h, 99)));
    cJSON_AddNumberToObject(o, "endToEndLatency999pct", ms(bm_hist_percentile(h, 99.9)));
    cJSON_AddNumberToObject(o, "endToEndLatencyMax", ms(h->total ? h->max : 0));
    cJSON_AddNumberToObject(o, "jobs", (double)r->sent);
    cJSON_AddNumberToObject(o, "done", (double)r->done);
    cJSON_AddNumberToObject(o, "lost", (double)r->lost);
    cJSON_AddNumberToObject(o, "errors", (double)r->errors);
    cJSON_AddNumberToObject(o, "timeouts", (double)r->timeouts);
    cJSON_AddNumberToObject(o, "partial", (double)r->partial);
    cJSON_AddNumberToObject(o, "lateSends", (double)r->late_sends);
    if (r->rank1_total)
        cJSON_AddNumberToObject(o, "rank1", (double)r->rank1_hits / (double)r->rank1_total);
    else
        cJSON_AddNullToObject(o, "rank1");
    cJSON_AddNumberToObject(o, "falseMatches", (double)r->false_matches);
    cJSON_AddNumberToObject(o, "durationSeconds", r->elapsed_s);
    return o;
}

static int emit_json(cJSON *o)
{
    char *s = cJSON_PrintUnformatted(o);
    if (s == NULL)
        return -1;
    printf("%s\n", s);
    fflush(stdout);
    cJSON_free(s);
    return 0;
}

static int parse_common(int argc, char **argv, struct run_flags *fl, const char **file,
                        const char *usage_line, int sweep)
{
    const char *pos[1];
    size_t npos;
    const struct bm_opt opts[] = {
        { "--rate", "R", &fl->rate, "send R jobs/s evenly (cycling through the file)" },
        { "--speedup", "X", &fl->speedup, "keep the file's schedule, X times faster (default 1)" },
        { "--max", NULL, &fl->max, "find the highest rate with p99 <= --p99" },
        { "--rates", "A,B,..", &fl->rates, "sweep: the rates to run" },
        { "--png", "FILE", &fl->png, "sweep: latency-vs-throughput plot (gnuplot)" },
        { "--dat", "FILE", &fl->dat, "sweep: data file (default PNG with .dat)" },
        { "--duration", "S", &fl->duration, "seconds per step (default: the file once; 10 for --max/sweep)" },
        { "--warmup", "S", &fl->warmup, "do not measure jobs scheduled in the first S seconds" },
        { "--p99", "MS", &fl->p99, "p99 bound of a sustained rate (default 250)" },
        { "--start-rate", "R", &fl->start_rate, "--max: first rate (default 50)" },
        { "--max-rate", "R", &fl->max_rate, "--max: never offer more (default 100000)" },
        { "--bisect", "N", &fl->bisect, "--max: bisection steps after the first failure (default 4)" },
        { "--json", NULL, &fl->json, "print one JSON object (only) on stdout" },
        { "--hist-out", "FILE", &fl->hist_out, "save the latency histogram (docs/formats.md)" },
        { "--keep-ids", NULL, &fl->keep_ids, "send recorded bytes verbatim: same ids, same times" },
        { "--jobs-topic", "NAME", &fl->jobs_topic, "full jobs topic name (default PREFIXjobs)" },
        { "--results-topic", "NAME", &fl->results_topic, "full results topic (default PREFIXresults)" },
        { "--grace", "S", &fl->grace, "wait this long for results after the last send (default 10)" },
        { "--accept", "SCORE", &fl->accept, "score of a rank-1 candidate that counts as a match (default 0.6)" },
        RP_KAFKA_OPTS(&fl->k),
    };
    (void)sweep;
    int p = rp_parse(argc, argv, opts, sizeof opts / sizeof opts[0], pos, 1, &npos, usage_line);
    if (p)
        return p > 0 ? 1 : -1;
    if (npos != 1) {
        fprintf(stderr, "biomatch-replay: give one replay FILE\n");
        return -1;
    }
    *file = pos[0];
    return 0;
}

struct setup {
    struct bm_replay file;
    struct rp_engine *eng;
    char jobs[256], results[256];
    double p99, duration, warmup;
};

static int setup(struct run_flags *fl, const char *path, struct setup *s, int default_duration)
{
    char err[512];
    double grace = 10, accept = 0.6;
    s->p99 = 250;
    s->duration = default_duration ? 10 : 0;
    s->warmup = 0;
    if ((fl->p99 && rp_double("--p99", fl->p99, 0.001, 1e9, &s->p99)) ||
        (fl->duration && rp_double("--duration", fl->duration, 0.01, 1e7, &s->duration)) ||
        (fl->warmup && rp_double("--warmup", fl->warmup, 0, 1e7, &s->warmup)) ||
        (fl->grace && rp_double("--grace", fl->grace, 0, 1e6, &grace)) ||
        (fl->accept && rp_double("--accept", fl->accept, -2, 2, &accept)) ||
        rp_kafka_conf(&fl->k, "biomatch-replay"))
        return 2;
    if (fl->keep_ids && (fl->max || fl->rates)) {
        fprintf(stderr, "biomatch-replay: --keep-ids sends each record once; not with --max or sweep\n");
        return 2;
    }
    if (bm_replay_read(path, &s->file, err, sizeof err) != BM_OK) {
        fprintf(stderr, "biomatch-replay: %s\n", err);
        return 1;
    }
    rp_topic(s->jobs, sizeof s->jobs, &fl->k, fl->jobs_topic, "jobs");
    rp_topic(s->results, sizeof s->results, &fl->k, fl->results_topic, "results");
    struct rp_engine_opts o = {
        .bus = &fl->k.conf, .bus_cons = &fl->k.cconf, .jobs_topic = s->jobs, .results_topic = s->results,
        .keep_ids = fl->keep_ids != NULL, .accept = accept, .grace_s = grace,
        .progress = isatty(STDOUT_FILENO) && fl->json == NULL,
    };
    s->eng = rp_engine_new(&s->file, &o, err, sizeof err);
    if (s->eng == NULL) {
        fprintf(stderr, "biomatch-replay: %s\n", err);
        bm_replay_free(&s->file);
        return 1;
    }
    return 0;
}

static void teardown(struct setup *s)
{
    rp_engine_free(s->eng);
    bm_replay_free(&s->file);
}

static int save_hist(const struct run_flags *fl, const struct rp_step_result *r)
{
    char err[512];
    if (fl->hist_out && bm_hist_save(r->hist, fl->hist_out, err, sizeof err) != BM_OK) {
        fprintf(stderr, "biomatch-replay: %s\n", err);
        return -1;
    }
    return 0;
}

static int step(struct setup *s, double rate, double speedup, struct rp_step_result *r,
                const struct run_flags *fl)
{
    char err[512];
    struct rp_step_spec spec = { rate, speedup, s->duration, s->warmup };
    if (!fl->json && isatty(STDOUT_FILENO) == 0 && rate > 0)
        fprintf(stderr, "biomatch-replay: step at %.1f jobs/s for %.1f s\n", rate, s->duration);
    if (rp_engine_step(s->eng, &spec, r, err, sizeof err) != BM_OK) {
        fprintf(stderr, "biomatch-replay: %s\n", err);
        bm_hist_free(r->hist);
        r->hist = NULL;
        return -1;
    }
    return 0;
}

static void step_line(FILE *f, const struct rp_step_result *r, double bound)
{
    fprintf(f, "  rate %9.1f  tput %9.1f  p50 %8.2f  p99 %8.2f  max %8.2f ms  lost %llu  errors %llu  %s\n",
            r->target_rate, r->throughput, ms(bm_hist_percentile(r->hist, 50)),
            ms(bm_hist_percentile(r->hist, 99)), ms(r->hist->total ? r->hist->max : 0),
            (unsigned long long)r->lost, (unsigned long long)r->errors,
            sustained(r, bound) ? "ok" : "NOT sustained");
}

/* --max: double, then bisect. */
static int run_max(struct setup *s, const struct run_flags *fl)
{
    double rate = 50, cap = 100000;
    uint64_t nbis = 4;
    if ((fl->start_rate && rp_double("--start-rate", fl->start_rate, 0.01, 1e7, &rate)) ||
        (fl->max_rate && rp_double("--max-rate", fl->max_rate, 0.01, 1e7, &cap)) ||
        (fl->bisect && rp_u64("--bisect", fl->bisect, 0, 20, &nbis)))
        return 2;
    FILE *out = fl->json ? stderr : stdout;
    fprintf(out, "searching the highest rate with p99 <= %.1f ms (%.0f s steps)\n", s->p99,
            s->duration);
    struct rp_step_result best = { 0 }, r;
    cJSON *steps = cJSON_CreateArray();
    double lo = 0, hi = 0;
    for (;;) {
        if (step(s, rate, 0, &r, fl) != 0)
            goto fail;
        step_line(out, &r, s->p99);
        cJSON_AddItemToArray(steps, step_json(&r));
        if (sustained(&r, s->p99)) {
            bm_hist_free(best.hist);
            best = r;
            lo = rate;
            if (rate >= cap)
                break;
            rate = rate * 2 > cap ? cap : rate * 2;
        } else {
            bm_hist_free(r.hist);
            hi = rate;
            break;
        }
    }
    for (uint64_t i = 0; hi > 0 && i < nbis; i++) {
        rate = lo > 0 ? (lo + hi) / 2 : hi / 2;
        if (step(s, rate, 0, &r, fl) != 0)
            goto fail;
        step_line(out, &r, s->p99);
        cJSON_AddItemToArray(steps, step_json(&r));
        if (sustained(&r, s->p99)) {
            bm_hist_free(best.hist);
            best = r;
            lo = rate;
        } else {
            bm_hist_free(r.hist);
            hi = rate;
        }
    }
    if (best.hist == NULL) {
        fprintf(out, "no rate down to %.2f jobs/s was sustained\n", rate);
        if (fl->json) {
            cJSON *o = cJSON_CreateObject();
            cJSON_AddNullToObject(o, "maxSustainedRate");
            cJSON_AddNumberToObject(o, "p99BoundMs", s->p99);
            cJSON_AddItemToObject(o, "steps", steps);
            emit_json(o);
            cJSON_Delete(o);
        } else {
            cJSON_Delete(steps);
        }
        return 3;
    }
    fprintf(out, "\nhighest sustained rate: %.1f jobs/s (throughput %.1f results/s)\n", lo,
            best.throughput);
    print_table(out, &best);
    int ret = save_hist(fl, &best) ? 1 : 0;
    if (fl->json) {
        cJSON *o = step_json(&best);
        cJSON_AddNumberToObject(o, "maxSustainedRate", lo);
        cJSON_AddNumberToObject(o, "p99BoundMs", s->p99);
        cJSON_AddItemToObject(o, "steps", steps);
        emit_json(o);
        cJSON_Delete(o);
    } else {
        cJSON_Delete(steps);
    }
    bm_hist_free(best.hist);
    return ret;
fail:
    cJSON_Delete(steps);
    bm_hist_free(best.hist);
    return 1;
}

int rp_run(int argc, char **argv)
{
    struct run_flags fl = { 0 };
    const char *path;
    int p = parse_common(argc, argv, &fl, &path,
                         "biomatch-replay run FILE (--rate R | --speedup X | --max) [flags]", 0);
    if (p)
        return p > 0 ? 0 : 2;
    if ((fl.rate != NULL) + (fl.speedup != NULL) + (fl.max != NULL) > 1) {
        fprintf(stderr, "biomatch-replay: choose one of --rate, --speedup, --max\n");
        return 2;
    }
    double rate = 0, speedup = 1;
    if ((fl.rate && rp_double("--rate", fl.rate, 0.001, 1e7, &rate)) ||
        (fl.speedup && rp_double("--speedup", fl.speedup, 0.001, 1e6, &speedup)))
        return 2;
    struct setup s = { 0 };
    int rc = setup(&fl, path, &s, fl.max != NULL);
    if (rc)
        return rc;
    if (fl.max) {
        rc = run_max(&s, &fl);
        teardown(&s);
        return rc;
    }
    struct rp_step_result r;
    if (step(&s, rate, rate > 0 ? 0 : speedup, &r, &fl) != 0) {
        teardown(&s);
        return 1;
    }
    print_table(fl.json ? stderr : stdout, &r);
    rc = save_hist(&fl, &r) ? 1 : 0;
    if (fl.json) {
        cJSON *o = step_json(&r);
        emit_json(o);
        cJSON_Delete(o);
    }
    bm_hist_free(r.hist);
    teardown(&s);
    return rc;
}

/* Write the gnuplot script and run gnuplot on it. */
static int plot(const char *dat, const char *png, double bound)
{
    char script[4200];
    snprintf(script, sizeof script, "%s.gp", dat);
    FILE *f = fopen(script, "w");
    if (f == NULL) {
        fprintf(stderr, "biomatch-replay: %s: %s\n", script, strerror(errno));
        return -1;
    }
    fprintf(f,
            "set terminal pngcairo size 900,600 noenhanced\n"
            "set output '%s'\n"
            "set title 'biomatch end-to-end latency vs throughput'\n"
            "set xlabel 'throughput (results/s)'\nset ylabel 'latency (ms)'\n"
            "set logscale y\nset grid\nset key top left\n"
            "plot '%s' using 2:3 with linespoints title 'p50', "
            "'' using 2:4 with linespoints title 'p99', "
            "'' using 2:5 with linespoints title 'p99.9', "
            "%g with lines dashtype 2 title 'p99 bound'\n",
            png, dat, bound);
    fclose(f);
    pid_t pid = fork();
    if (pid == 0) {
        execlp("gnuplot", "gnuplot", script, (char *)NULL);
        _exit(127);
    }
    int st = 0;
    if (pid < 0 || waitpid(pid, &st, 0) < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        fprintf(stderr, "biomatch-replay: gnuplot failed on %s (is gnuplot installed?)\n", script);
        return -1;
    }
    return 0;
}

int rp_sweep(int argc, char **argv)
{
    struct run_flags fl = { 0 };
    const char *path;
    int p = parse_common(argc, argv, &fl, &path,
                         "biomatch-replay sweep FILE --rates A,B,.. [--png OUT] [flags]", 1);
    if (p)
        return p > 0 ? 0 : 2;
    if (fl.rates == NULL) {
        fprintf(stderr, "biomatch-replay: sweep needs --rates A,B,...\n");
        return 2;
    }
    double rates[64];
    size_t nr = 0;
    for (const char *t = fl.rates; *t;) {
        const char *comma = strchr(t, ',');
        size_t len = comma ? (size_t)(comma - t) : strlen(t);
        char one[64];
        if (nr == 64 || len == 0 || len >= sizeof one) {
            fprintf(stderr, "biomatch-replay: --rates takes up to 64 numbers, comma-separated\n");
            return 2;
        }
        memcpy(one, t, len);
        one[len] = '\0';
        if (rp_double("--rates", one, 0.001, 1e7, &rates[nr]))
            return 2;
        nr++;
        t += len + (comma != NULL);
    }
    struct setup s = { 0 };
    int rc = setup(&fl, path, &s, 1);
    if (rc)
        return rc;
    char dat[4096];
    if (fl.dat)
        snprintf(dat, sizeof dat, "%s", fl.dat);
    else
        snprintf(dat, sizeof dat, "%s.dat", fl.png ? fl.png : "sweep");
    FILE *d = fopen(dat, "w");
    if (d == NULL) {
        fprintf(stderr, "biomatch-replay: %s: %s\n", dat, strerror(errno));
        teardown(&s);
        return 1;
    }
    FILE *out = fl.json ? stderr : stdout;
    fprintf(d, "# target_rate throughput p50_ms p99_ms p999_ms max_ms lost errors\n");
    cJSON *steps = cJSON_CreateArray();
    struct bm_hist *all = NULL;
    rc = 0;
    for (size_t i = 0; i < nr; i++) {
        struct rp_step_result r;
        if (step(&s, rates[i], 0, &r, &fl) != 0) {
            rc = 1;
            break;
        }
        step_line(out, &r, s.p99);
        fprintf(d, "%.3f %.3f %.3f %.3f %.3f %.3f %llu %llu\n", r.target_rate, r.throughput,
                ms(bm_hist_percentile(r.hist, 50)), ms(bm_hist_percentile(r.hist, 99)),
                ms(bm_hist_percentile(r.hist, 99.9)), ms(r.hist->total ? r.hist->max : 0),
                (unsigned long long)r.lost, (unsigned long long)r.errors);
        fflush(d);
        cJSON_AddItemToArray(steps, step_json(&r));
        if (all == NULL) {
            all = r.hist;
        } else {
            bm_hist_merge(all, r.hist);
            bm_hist_free(r.hist);
        }
    }
    fclose(d);
    if (all && fl.hist_out) {
        struct rp_step_result tmp = { .hist = all };
        if (save_hist(&fl, &tmp))
            rc = 1;
    }
    bm_hist_free(all);
    if (rc == 0 && fl.png && plot(dat, fl.png, s.p99) != 0)
        rc = 1;
    else if (rc == 0 && fl.png)
        fprintf(out, "plot: %s (data %s)\n", fl.png, dat);
    if (fl.json) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddItemToObject(o, "steps", steps);
        emit_json(o);
        cJSON_Delete(o);
    } else {
        cJSON_Delete(steps);
    }
    teardown(&s);
    return rc;
}
