/* See topics.h. Names are built with snprintf and checked for truncation;
 * a name that does not fit is an error, never a silently shorter topic. */
#include "topics.h"

#include <stdio.h>
#include <string.h>

static const char *base_name(enum bm_topic t)
{
    switch (t) {
    case BM_TOPIC_ENROLL: return "enroll";
    case BM_TOPIC_JOBS: return "jobs";
    case BM_TOPIC_PARTIALS: return "partials";
    case BM_TOPIC_RESULTS: return "results";
    case BM_TOPIC_AUDIT: return "audit";
    case BM_TOPIC_DLQ: return "dlq";
    case BM_TOPIC_GALLERIES: return "galleries";
    }
    return NULL;
}

static int fits(int n, size_t len)
{
    return n >= 0 && (size_t)n < len ? 0 : -1;
}

int bm_topic_name(char *buf, size_t len, const char *prefix, enum bm_topic t)
{
    const char *base = base_name(t);
    if (base == NULL)
        return -1;
    return fits(snprintf(buf, len, "%s%s", prefix, base), len);
}

int bm_topic_gallery(char *buf, size_t len, const char *prefix, const char *gallery)
{
    if (!bm_topic_gallery_name_valid(gallery))
        return -1;
    return fits(snprintf(buf, len, "%sgallery.%s", prefix, gallery), len);
}

int bm_topic_tasks(char *buf, size_t len, const char *prefix, const char *gallery)
{
    if (!bm_topic_gallery_name_valid(gallery))
        return -1;
    return fits(snprintf(buf, len, "%stasks.%s", prefix, gallery), len);
}

bool bm_topic_reply_allowed(const char *prefix, const char *topic)
{
    if (topic[0] == '_')
        return false;
    size_t n = strlen(prefix);
    if (strncmp(topic, prefix, n) != 0)
        return true;
    const char *rest = topic + n;
    return strcmp(rest, "results") == 0 || strcmp(rest, "replies") == 0 ||
           (strncmp(rest, "results.", 8) == 0 && rest[8] != '\0') ||
           (strncmp(rest, "replies.", 8) == 0 && rest[8] != '\0');
}

bool bm_topic_gallery_name_valid(const char *name)
{
    size_t n = name != NULL ? strlen(name) : 0;
    if (n == 0 || n > 64)
        return false;
    for (size_t i = 0; i < n; i++) {
        char ch = name[i];
        bool ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
                  (ch >= '0' && ch <= '9') || ch == '_' || ch == '-';
        if (!ok)
            return false;
    }
    return true;
}
