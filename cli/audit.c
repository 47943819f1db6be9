/* `biomatch audit verify`: read the audit topic (every partition, from the
 * beginning or from --from) and check every writer's chain with
 * lib/audit/verify.h. Prints one line per finding, earliest position first,
 * and a summary. Exit 0: every chain intact; 1: findings; 2: could not
 * check (usage, key file, Kafka). */
#define _POSIX_C_SOURCE 200809L

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "audit/read.h"
#include "audit/verify.h"
#include "cli.h"
#include "common/clock.h"
#include "conf/topics.h"
#include "crypto/keyring.h"

#define READ_TIMEOUT_MS 30000

static int on_record(int32_t partition, int64_t offset, const void *value, size_t len,
                     void *opaque)
{
    return bm_audit_verifier_add(opaque, partition, offset, value, len) == BM_OK ? 0 : BM_ENOMEM;
}

static void on_finding(const struct bm_audit_finding *f, void *opaque)
{
    (void)opaque;
    printf("%s partition=%d offset=%" PRId64 " writer=%s seq=%" PRIu64 ": %s\n",
           bm_audit_finding_name(f->kind), (int)f->partition, f->offset,
           f->writer[0] ? f->writer : "?", f->seq, f->detail);
}

/* The audit keys to check with: --key-file/--key-id, else the
 * configuration's, plus --previous-key ID=FILE (a key rotated out). NULL
 * with *rc BM_OK when there are none. */
static struct bm_keyring *load_keys(const struct bm_conf *conf, const char *file,
                                    const char *id, const char *previous, int *rc)
{
    *rc = BM_OK;
    if (file == NULL && id == NULL) {
        file = conf->security.audit_key_file;
        id = conf->security.audit_key_id;
    }
    if (file == NULL && previous == NULL)
        return NULL;
    char err[512];
    struct bm_keyring *kr = bm_keyring_new();
    if (kr == NULL) {
        *rc = BM_ENOMEM;
        return NULL;
    }
    if (file != NULL && (id == NULL || file == NULL)) {
        fprintf(stderr, "biomatch: --key-file and --key-id go together\n");
        *rc = BM_EINVAL;
    } else if (file != NULL) {
        *rc = bm_keyring_add_file(kr, id, file, 1, err, sizeof err);
    }
    if (*rc == BM_OK && previous != NULL) {
        const char *eq = strchr(previous, '=');
        char pid[BM_KEYRING_ID_MAX + 1];
        if (eq == NULL || eq == previous || (size_t)(eq - previous) > BM_KEYRING_ID_MAX) {
            fprintf(stderr, "biomatch: --previous-key wants ID=FILE\n");
            *rc = BM_EINVAL;
        } else {
            memcpy(pid, previous, (size_t)(eq - previous));
            pid[eq - previous] = '\0';
            *rc = bm_keyring_add_file(kr, pid, eq + 1, 0, err, sizeof err);
        }
    }
    if (*rc != BM_OK) {
        if (*rc != BM_EINVAL || file != NULL)
            fprintf(stderr, "biomatch: audit key: %s\n", err);
        bm_keyring_free(kr);
        return NULL;
    }
    return kr;
}

static int verify(int argc, char **argv)
{
    struct cli_common c = { 0 };
    const char *from_s = NULL, *topic_s = NULL, *key_file = NULL, *key_id = NULL,
               *previous = NULL, *interval_s = NULL;
    const struct bm_opt opts[] = {
        CLI_COMMON_OPTS(&c),
        { "--from", "OFFSET", &from_s, "start every partition at OFFSET (chains may then "
          "start mid-way) instead of its first record" },
        { "--topic", "NAME", &topic_s, "verify this topic (e.g. an archived copy) instead "
          "of the prefix's audit topic" },
        { "--key-file", "FILE", &key_file, "audit key (default: security.audit_key_file)" },
        { "--key-id", "ID", &key_id, "its id (default: security.audit_key_id)" },
        { "--previous-key", "ID=FILE", &previous, "a key rotated out, for older records" },
        { "--interval-ms", "MS", &interval_s, "checkpoint interval assumed for a chain "
          "without a checkpoint (default 60000)" },
    };
    const char *pos[1];
    size_t npos = 0;
    int p = cli_parse(argc, argv, 1, opts, sizeof opts / sizeof opts[0], pos, 0, &npos,
                      "biomatch audit verify [flags]",
                      "Check the audit chains: every record's keyed hash, seqs without gaps or\n"
                      "repeats, each prev_hash linking to the record before, and each chain\n"
                      "ending in a final checkpoint or a recent record. Prints every\n"
                      "MODIFIED, INSERTED, DELETED, TRUNCATED or UNKEYED record, earliest first.\n"
                      "Exit 0: intact; 1: findings; 2: could not check.");
    if (p != 0)
        return p > 0 ? 0 : 2;
    uint64_t from = 0;
    uint32_t interval = 60000;
    if ((from_s && cli_u64("--from", from_s, &from)) ||
        (interval_s && cli_u32("--interval-ms", interval_s, 100, 86400000, &interval)))
        return 2;
    if (cli_conf_load(&c) != 0)
        return 2;
    int ret = 2, rc = BM_OK;
    char topic[BM_TOPIC_MAX], err[512];
    struct bm_bus_prop *props = calloc(c.conf->kafka_n + 1, sizeof *props);
    struct bm_keyring *keys = NULL;
    struct bm_audit_verifier *v = NULL;
    struct bm_bus_conf bc;
    if (props == NULL || cli_bus_conf(&c, &bc, props) != 0)
        goto out;
    if (topic_s != NULL)
        snprintf(topic, sizeof topic, "%s", topic_s);
    else if (bm_topic_name(topic, sizeof topic, cli_prefix(&c), BM_TOPIC_AUDIT) != 0)
        goto out;
    keys = load_keys(c.conf, key_file, key_id, previous, &rc);
    if (rc != BM_OK)
        goto out;
    struct bm_audit_verify_opts o = {keys, from == 0, bm_wall_ms(), interval};
    v = bm_audit_verifier_new(&o, err, sizeof err);
    if (v == NULL) {
        fprintf(stderr, "biomatch: %s\n", err);
        goto out;
    }
    int np = 0;
    rc = bm_audit_read(&bc, topic, (int64_t)from, 0, READ_TIMEOUT_MS, on_record, v, &np, err,
                       sizeof err);
    if (rc != BM_OK) {
        fprintf(stderr, "biomatch: audit verify: %s\n",
                rc == BM_ENOMEM ? "out of memory" : err);
        goto out;
    }
    struct bm_audit_verify_stats st;
    int n = bm_audit_verifier_finish(v, on_finding, NULL, &st);
    if (n < 0) {
        fprintf(stderr, "biomatch: audit verify: out of memory\n");
        goto out;
    }
    printf("audit verify: topic %s, %d partitions, %" PRIu64 " records, %" PRIu64
           " writers, %" PRIu64 " checkpoints, %s, %" PRIu64 " findings\n",
           topic, np, st.records, st.writers, st.checkpoints, keys ? "keyed" : "unkeyed",
           st.findings);
    ret = n == 0 ? 0 : 1;
out:
    bm_audit_verifier_free(v);
    bm_keyring_free(keys);
    free(props);
    cli_conf_free(&c);
    return ret;
}

int cli_audit(int argc, char **argv)
{
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        FILE *f = argc < 2 ? stderr : stdout;
        fprintf(f, "usage: biomatch audit verify [flags]   (biomatch audit verify --help)\n");
        return argc < 2 ? 2 : 0;
    }
    if (strcmp(argv[1], "verify") == 0)
        return verify(argc - 1, argv + 1);
    fprintf(stderr, "biomatch: unknown audit command '%s' (verify)\n", argv[1]);
    return 2;
}
