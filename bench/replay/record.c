/* `biomatch-replay record`: capture a live topic into a replay file.
 *
 * Every partition of the topic is assigned explicitly (no consumer group, so
 * recording never disturbs the cluster's own consumers) at its high
 * watermark, or at the beginning with --from-beginning. Records are kept in
 * memory, ordered by their Kafka timestamp (CreateTime: the producer's send
 * time) and written when the capture ends, each with its send time relative
 * to the earliest one. Kafka timestamps have millisecond resolution, so the
 * relative times in the file are whole milliseconds.
 *
 * Invariant: the file holds exactly the records consumed, in timestamp order
 * (ties in consumption order), with their key, value and headers verbatim. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "replay.h"
#include "replayfile.h"
#include "common/clock.h"

struct cap {
    int64_t ts;              /* record timestamp, ms */
    size_t seq;              /* consumption order, breaks ties */
    struct bm_bus_msg *m;    /* owned */
};

static volatile sig_atomic_t stop_flag;

static void on_signal(int sig)
{
    (void)sig;
    stop_flag = 1;
}

static int cmp_cap(const void *a, const void *b)
{
    const struct cap *x = a, *y = b;
    if (x->ts != y->ts)
        return x->ts < y->ts ? -1 : 1;
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

int rp_record(int argc, char **argv)
{
    struct rp_kafka k = { 0 };
    const char *from = "jobs", *topic_s = NULL, *out = NULL, *dur_s = NULL, *count_s = NULL;
    const char *begin = NULL, *idle_s = NULL;
    const char *pos[1];
    size_t npos;
    const struct bm_opt opts[] = {
        { "--from", "BASE", &from, "topic to capture, after the prefix (default jobs)" },
        { "--topic", "NAME", &topic_s, "full topic name (overrides --from and --prefix)" },
        { "--out", "FILE", &out, "replay file to write (required)" },
        { "--duration", "S", &dur_s, "stop after S seconds (default: Ctrl-C)" },
        { "--count", "N", &count_s, "stop after N records" },
        { "--idle", "S", &idle_s, "stop S seconds after the last record (once one was seen)" },
        { "--from-beginning", NULL, &begin, "start at the oldest record, not at the end" },
        RP_KAFKA_OPTS(&k),
    };
    int p = rp_parse(argc, argv, opts, sizeof opts / sizeof opts[0], pos, 0, &npos,
                     "biomatch-replay record --from jobs --out FILE [--duration S] [flags]");
    if (p)
        return p > 0 ? 0 : 2;
    double dur = 0, idle = 0;
    uint64_t count = UINT64_MAX;
    if (out == NULL) {
        fprintf(stderr, "biomatch-replay: record needs --out FILE\n");
        return 2;
    }
    if ((dur_s && rp_double("--duration", dur_s, 0.001, 1e7, &dur)) ||
        (idle_s && rp_double("--idle", idle_s, 0.001, 1e7, &idle)) ||
        (count_s && rp_u64("--count", count_s, 1, BM_REPLAY_MAX_RECORDS, &count)) ||
        rp_kafka_conf(&k, "biomatch-replay-record"))
        return 2;
    char topic[256], err[512];
    rp_topic(topic, sizeof topic, &k, topic_s, from);

    int nparts = 0;
    int64_t *hw = NULL;
    if (rp_topic_offsets(&k.cconf, topic, &nparts, &hw, err, sizeof err) != BM_OK) {
        fprintf(stderr, "biomatch-replay: %s\n", err);
        return 1;
    }
    struct bm_consumer *c = bm_consumer_new(&k.cconf, NULL, NULL, NULL, err, sizeof err);
    struct bm_bus_tp *tps = calloc((size_t)nparts, sizeof *tps);
    int ret = 1;
    struct cap *caps = NULL;
    size_t n = 0, cap = 0;
    if (c == NULL || tps == NULL) {
        fprintf(stderr, "biomatch-replay: %s\n", c ? "out of memory" : err);
        goto out;
    }
    for (int i = 0; i < nparts; i++)
        tps[i] = (struct bm_bus_tp){ topic, i, begin ? BM_OFFSET_BEGINNING : hw[i] };
    if (bm_consumer_assign(c, tps, (size_t)nparts, err, sizeof err) != BM_OK) {
        fprintf(stderr, "biomatch-replay: %s\n", err);
        goto out;
    }
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    fprintf(stderr, "biomatch-replay: recording %s (%d partitions)%s\n", topic, nparts,
            dur_s ? "" : "; Ctrl-C stops");
    int64_t t0 = bm_mono_us(), last = t0;
    while (!stop_flag && n < count) {
        int64_t now = bm_mono_us();
        if (dur_s && now - t0 >= (int64_t)(dur * 1e6))
            break;
        if (idle_s && n > 0 && now - last >= (int64_t)(idle * 1e6))
            break;
        struct bm_bus_msg *m = NULL;
        int rc = bm_consumer_poll(c, 100, &m, err, sizeof err);
        if (rc == BM_ETIMEDOUT)
            continue;
        if (rc != BM_OK) {
            fprintf(stderr, "biomatch-replay: consumer: %s\n", err);
            continue;
        }
        if (n == cap) {
            size_t nc = cap ? cap * 2 : 1024;
            struct cap *g = realloc(caps, nc * sizeof *g);
            if (g == NULL) {
                bm_bus_msg_free(m);
                fprintf(stderr, "biomatch-replay: out of memory\n");
                goto out;
            }
            caps = g;
            cap = nc;
        }
        caps[n] = (struct cap){ m->timestamp_ms >= 0 ? m->timestamp_ms : bm_wall_ms(), n, m };
        n++;
        last = bm_mono_us();
    }
    qsort(caps, n, sizeof *caps, cmp_cap);
    struct bm_replay_writer *w = bm_replay_writer_open(out, topic, bm_wall_ms(), err, sizeof err);
    if (w == NULL) {
        fprintf(stderr, "biomatch-replay: %s\n", err);
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        const struct bm_bus_msg *m = caps[i].m;
        struct bm_replay_hdr h[BM_REPLAY_MAX_HEADERS];
        size_t nh = m->nheaders < BM_REPLAY_MAX_HEADERS ? m->nheaders : BM_REPLAY_MAX_HEADERS;
        for (size_t j = 0; j < nh; j++)
            h[j] = (struct bm_replay_hdr){ m->headers[j].name, m->headers[j].value,
                                           m->headers[j].len };
        struct bm_replay_record r = {
            .t_us = (uint64_t)(caps[i].ts - caps[0].ts) * 1000u,
            .key = m->key, .keylen = m->keylen, .value = m->value, .valuelen = m->valuelen,
            .headers = h, .nheaders = nh, .expect = NULL,
        };
        if (bm_replay_writer_add(w, &r, err, sizeof err) != BM_OK) {
            fprintf(stderr, "biomatch-replay: %s\n", err);
            bm_replay_writer_free(w);
            goto out;
        }
    }
    if (bm_replay_writer_close(w, err, sizeof err) != BM_OK) {
        fprintf(stderr, "biomatch-replay: %s\n", err);
        goto out;
    }
    fprintf(stderr, "biomatch-replay: wrote %zu records spanning %.3f s to %s\n", n,
            n ? (double)(caps[n - 1].ts - caps[0].ts) / 1000.0 : 0.0, out);
    ret = 0;
out:
    for (size_t i = 0; i < n; i++)
        bm_bus_msg_free(caps[i].m);
    free(caps);
    free(tps);
    free(hw);
    if (c) {
        bm_consumer_close(c, err, sizeof err);
        bm_consumer_free(c);
    }
    return ret;
}
