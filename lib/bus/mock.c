/* The mock cluster wrapper. librdkafka attaches a mock cluster to an
 * rd_kafka_t, so this module keeps one otherwise idle producer handle whose
 * only job is to own the cluster; its lifetime is the cluster's lifetime. */
#include "bus/mock.h"

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <stdlib.h>

#include "common/err.h"

struct bm_mock_cluster {
    rd_kafka_t *rk;                /* owner of the cluster, never used for I/O */
    rd_kafka_mock_cluster_t *mc;
};

struct bm_mock_cluster *bm_mock_cluster_new(int brokers, char *err, size_t errlen)
{
    if (brokers < 1 || brokers > 16) {
        bm_seterr(err, errlen, BM_EINVAL, "mock cluster: %d brokers", brokers);
        return NULL;
    }
    struct bm_mock_cluster *m = calloc(1, sizeof *m);
    if (m == NULL) {
        bm_seterr(err, errlen, BM_ENOMEM, "mock cluster: out of memory");
        return NULL;
    }
    char msg[512];
    rd_kafka_conf_t *rc = rd_kafka_conf_new();
    /* The owner handle never connects; without this it warns about its
     * missing bootstrap.servers on every start. */
    rd_kafka_conf_set(rc, "log_level", "4", msg, sizeof msg);
    m->rk = rd_kafka_new(RD_KAFKA_PRODUCER, rc, msg, sizeof msg);
    if (m->rk == NULL) {
        rd_kafka_conf_destroy(rc);
        free(m);
        bm_seterr(err, errlen, BM_EKAFKA, "mock cluster: %s", msg);
        return NULL;
    }
    m->mc = rd_kafka_mock_cluster_new(m->rk, brokers);
    if (m->mc == NULL) {
        rd_kafka_destroy(m->rk);
        free(m);
        bm_seterr(err, errlen, BM_EKAFKA, "mock cluster: could not start");
        return NULL;
    }
    return m;
}

const char *bm_mock_cluster_bootstraps(const struct bm_mock_cluster *m)
{
    return rd_kafka_mock_cluster_bootstraps(m->mc);
}

int bm_mock_cluster_create_topic(struct bm_mock_cluster *m, const char *name,
                                 int partitions, char *err, size_t errlen)
{
    if (name == NULL || name[0] == '\0' || partitions < 1)
        return bm_seterr(err, errlen, BM_EINVAL, "mock topic: bad name or count");
    rd_kafka_resp_err_t e = rd_kafka_mock_topic_create(m->mc, name, partitions, 1);
    if (e != RD_KAFKA_RESP_ERR_NO_ERROR)
        return bm_seterr(err, errlen, BM_EKAFKA, "mock topic %s: %s", name,
                         rd_kafka_err2str(e));
    return BM_OK;
}

int bm_mock_cluster_fail_requests(struct bm_mock_cluster *m, int api_key,
                                  int kafka_err, int count)
{
    if (api_key < 0 || api_key > 32767 || count < 1 || count > 1000)
        return BM_EINVAL;
    for (int i = 0; i < count; i++)
        rd_kafka_mock_push_request_errors(m->mc, (int16_t)api_key, 1,
                                          (rd_kafka_resp_err_t)kafka_err);
    return BM_OK;
}

void bm_mock_cluster_free(struct bm_mock_cluster *m)
{
    if (m == NULL)
        return;
    rd_kafka_mock_cluster_destroy(m->mc);
    rd_kafka_destroy(m->rk);
    free(m);
}
