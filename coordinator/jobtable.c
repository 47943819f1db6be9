/* The aggregator's job table (see jobtable.h): a chained hash on job id
 * plus two doubly linked lists, open jobs and done jobs in finishing order.
 * The hash grows by doubling when the load passes 1, so lookups stay O(1)
 * however many jobs are in flight; the lists make deadline scans and the
 * expiry of done ids O(open) and O(expired). */
#include "jobtable.h"

#include <stdlib.h>
#include <string.h>

#include "common/assert.h"
#include "wire/decode.h"
#include "wire/shard.h"

struct bm_list {
    struct bm_job *head, *tail;
    size_t n;
};

struct bm_jobtable {
    struct bm_job **buckets;
    size_t nbuckets;            /* power of two */
    size_t count;               /* jobs in the hash (open + done) */
    struct bm_list open;        /* OPEN and SENT jobs, oldest first */
    struct bm_list done;        /* DONE jobs, oldest first */
    int64_t done_window_ms;
    size_t done_max;
};

static void list_push(struct bm_list *l, struct bm_job *j)
{
    j->next = NULL;
    j->prev = l->tail;
    if (l->tail)
        l->tail->next = j;
    else
        l->head = j;
    l->tail = j;
    l->n++;
}

static void list_unlink(struct bm_list *l, struct bm_job *j)
{
    if (j->prev)
        j->prev->next = j->next;
    else
        l->head = j->next;
    if (j->next)
        j->next->prev = j->prev;
    else
        l->tail = j->prev;
    j->next = j->prev = NULL;
    l->n--;
}

static size_t bucket_of(const struct bm_jobtable *t, const char *id)
{
    return (size_t)(bm_subject_key(id, strlen(id)) & (t->nbuckets - 1));
}

struct bm_jobtable *bm_jobtable_new(int64_t done_window_ms, size_t done_max)
{
    struct bm_jobtable *t = calloc(1, sizeof *t);
    if (t == NULL)
        return NULL;
    t->nbuckets = 256;
    t->buckets = calloc(t->nbuckets, sizeof *t->buckets);
    if (t->buckets == NULL) {
        free(t);
        return NULL;
    }
    t->done_window_ms = done_window_ms;
    t->done_max = done_max;
    return t;
}

static void free_partials(struct bm_job *j)
{
    bm_wire_free_partial(j->opened);
    j->opened = NULL;
    if (j->shards) {
        for (uint32_t i = 0; i < j->shard_count; i++)
            bm_wire_free_partial(j->shards[i]);
        free(j->shards);
        j->shards = NULL;
    }
    j->answered = 0;
}

static void job_free(struct bm_job *j)
{
    if (j == NULL)
        return;
    free_partials(j);
    free(j->id);
    free(j);
}

void bm_jobtable_free(struct bm_jobtable *t)
{
    if (t == NULL)
        return;
    for (size_t b = 0; b < t->nbuckets; b++) {
        struct bm_job *j = t->buckets[b];
        while (j) {
            struct bm_job *n = j->hnext;
            job_free(j);
            j = n;
        }
    }
    free(t->buckets);
    free(t);
}

struct bm_job *bm_jobtable_find(struct bm_jobtable *t, const char *id)
{
    for (struct bm_job *j = t->buckets[bucket_of(t, id)]; j; j = j->hnext)
        if (strcmp(j->id, id) == 0)
            return j;
    return NULL;
}

/* Double the bucket array; on ENOMEM keep the old one (longer chains,
 * still correct). */
static void grow(struct bm_jobtable *t)
{
    size_t nb = t->nbuckets * 2;
    struct bm_job **b = calloc(nb, sizeof *b);
    if (b == NULL)
        return;
    struct bm_job **old = t->buckets;
    size_t oldn = t->nbuckets;
    t->buckets = b;
    t->nbuckets = nb;
    for (size_t i = 0; i < oldn; i++) {
        struct bm_job *j = old[i];
        while (j) {
            struct bm_job *n = j->hnext;
            size_t k = bucket_of(t, j->id);
            j->hnext = b[k];
            b[k] = j;
            j = n;
        }
    }
    free(old);
}

struct bm_job *bm_jobtable_add(struct bm_jobtable *t, const char *id, int32_t partition,
                               int64_t offset, int64_t now_ms)
{
    BM_ASSERT(id != NULL && bm_jobtable_find(t, id) == NULL);
    struct bm_job *j = calloc(1, sizeof *j);
    if (j == NULL)
        return NULL;
    j->id = strdup(id);
    if (j->id == NULL) {
        free(j);
        return NULL;
    }
    j->partition = partition;
    j->first_offset = offset;
    j->created_ms = now_ms;
    if (t->count + 1 > t->nbuckets)
        grow(t);
    size_t k = bucket_of(t, id);
    j->hnext = t->buckets[k];
    t->buckets[k] = j;
    t->count++;
    list_push(&t->open, j);
    return j;
}

int bm_jobtable_set_shards(struct bm_job *j, uint32_t shard_count)
{
    if (j->shards != NULL || shard_count == 0)
        return j->shard_count == shard_count ? 0 : -1;
    j->shards = calloc(shard_count, sizeof *j->shards);
    if (j->shards == NULL)
        return -1;
    j->shard_count = shard_count;
    return 0;
}

void bm_jobtable_finish(struct bm_jobtable *t, struct bm_job *j, int64_t now_ms)
{
    BM_ASSERT(t != NULL && j != NULL);
    if (j->state == BM_JOB_DONE)
        return;
    free_partials(j);
    list_unlink(&t->open, j);
    j->state = BM_JOB_DONE;
    j->done_ms = now_ms;
    list_push(&t->done, j);
}

void bm_jobtable_remove(struct bm_jobtable *t, struct bm_job *j)
{
    struct bm_job **pp = &t->buckets[bucket_of(t, j->id)];
    while (*pp && *pp != j)
        pp = &(*pp)->hnext;
    if (*pp)
        *pp = j->hnext;
    t->count--;
    list_unlink(j->state == BM_JOB_DONE ? &t->done : &t->open, j);
    job_free(j);
}

void bm_jobtable_expire(struct bm_jobtable *t, int64_t now_ms)
{
    while (t->done.head) {
        struct bm_job *j = t->done.head;
        if (t->done.n <= t->done_max && now_ms - j->done_ms < t->done_window_ms)
            break;
        bm_jobtable_remove(t, j);
    }
}

struct bm_job *bm_jobtable_first_open(struct bm_jobtable *t)
{
    return t->open.head;
}

size_t bm_jobtable_open_count(const struct bm_jobtable *t)
{
    return t->open.n;
}

size_t bm_jobtable_done_count(const struct bm_jobtable *t)
{
    return t->done.n;
}
