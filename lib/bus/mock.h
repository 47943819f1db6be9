/* An in-process Kafka cluster (librdkafka's mock cluster) for fast unit
 * tests and the zero-install demo. It speaks the Kafka protocol on loopback
 * ports inside this process, so producers and consumers use it through
 * bm_mock_cluster_bootstraps() like any broker.
 *
 * Limits (librdkafka 2.0.2): no admin API (create topics with
 * bm_mock_cluster_create_topic), no compaction, no static membership, no
 * read_committed. Never the only Kafka the test suite sees. */
#ifndef BM_BUS_MOCK_H
#define BM_BUS_MOCK_H

#include <stddef.h>

struct bm_mock_cluster;

/* Start a mock cluster of 'brokers' brokers (1..16), owned by a dedicated
 * librdkafka handle. Returns it (caller owns; bm_mock_cluster_free) or NULL
 * with a message in err. Thread: any. */
struct bm_mock_cluster *bm_mock_cluster_new(int brokers, char *err,
                                            size_t errlen);

/* The bootstrap.servers string for clients; owned by the cluster, valid
 * until bm_mock_cluster_free. Thread: any. */
const char *bm_mock_cluster_bootstraps(const struct bm_mock_cluster *m);

/* Create 'name' with 'partitions' partitions (replication 1). Returns BM_OK,
 * BM_EINVAL or BM_EKAFKA. Thread: any. */
int bm_mock_cluster_create_topic(struct bm_mock_cluster *m, const char *name,
                                 int partitions, char *err, size_t errlen);

/* Make the next 'count' requests of Kafka API 'api_key' (e.g. 22 =
 * InitProducerId, 0 = Produce) fail with Kafka error code 'kafka_err', to
 * exercise error paths. Returns BM_OK or BM_EINVAL. Thread: any. */
int bm_mock_cluster_fail_requests(struct bm_mock_cluster *m, int api_key,
                                  int kafka_err, int count);

/* Stop the cluster (NULL is fine). Free every client using it first, or
 * they will spend their time reconnecting. Thread: any. */
void bm_mock_cluster_free(struct bm_mock_cluster *m);

#endif /* BM_BUS_MOCK_H */
