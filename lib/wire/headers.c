/* Header values of the wire contract (headers.h). Parsing here is strict
 * about what it accepts and never reads past 'len': header values come from
 * any producer and are not NUL-terminated. */
#include "wire/headers.h"

#include <stdio.h>
#include <string.h>

int bm_wire_content_type(const ProtobufCMessageDescriptor *desc, char *buf, size_t len)
{
    return snprintf(buf, len, "%s; proto=%s", BM_CT_RAW, desc->name);
}

static int lower(int c)
{
    return (c >= 'A' && c <= 'Z') ? c + ('a' - 'A') : c;
}

/* Case-insensitive: does v[0..n) equal the NUL-terminated 'lit'? */
static int ieq(const char *v, size_t n, const char *lit)
{
    if (strlen(lit) != n)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (lower((unsigned char)v[i]) != lower((unsigned char)lit[i]))
            return 0;
    return 1;
}

static int is_space(char c)
{
    return c == ' ' || c == '\t';
}

int bm_wire_content_type_ok(const char *v, size_t len, const ProtobufCMessageDescriptor *desc)
{
    if (v == NULL)
        return 1;
    size_t i = 0;
    while (i < len && v[i] != ';')
        i++;
    size_t tl = i;
    while (tl > 0 && is_space(v[tl - 1]))
        tl--;
    size_t ts = 0;
    while (ts < tl && is_space(v[ts]))
        ts++;
    if (!ieq(v + ts, tl - ts, BM_CT_RAW) && !ieq(v + ts, tl - ts, BM_CT_SR))
        return 0;
    /* Parameters: "; name=value" pairs; only proto= is interpreted. */
    while (i < len) {
        i++; /* skip ';' */
        size_t s = i;
        while (i < len && v[i] != ';')
            i++;
        size_t a = s, b = i;
        while (a < b && is_space(v[a]))
            a++;
        while (b > a && is_space(v[b - 1]))
            b--;
        if (b - a > 6 && ieq(v + a, 6, "proto=")) {
            const char *val = v + a + 6;
            size_t vl = b - a - 6;
            if (vl >= 2 && val[0] == '"' && val[vl - 1] == '"')
                val++, vl -= 2;
            if (vl != strlen(desc->name) || memcmp(val, desc->name, vl) != 0)
                return 0;
        }
    }
    return 1;
}

static int hex_lower(const char *p, size_t n, int *all_zero)
{
    *all_zero = 1;
    for (size_t i = 0; i < n; i++) {
        char c = p[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')))
            return 0;
        if (c != '0')
            *all_zero = 0;
    }
    return 1;
}

int bm_wire_traceparent_valid(const char *v, size_t len)
{
    int z;
    if (v == NULL || len < 55)
        return 0;
    if (!hex_lower(v, 2, &z) || (v[0] == 'f' && v[1] == 'f'))
        return 0;
    if (v[2] != '-' || v[35] != '-' || v[52] != '-')
        return 0;
    if (!hex_lower(v + 3, 32, &z) || z)
        return 0;
    if (!hex_lower(v + 36, 16, &z) || z)
        return 0;
    if (!hex_lower(v + 53, 2, &z))
        return 0;
    if (v[0] == '0' && v[1] == '0')
        return len == 55;
    return len == 55 || v[55] == '-';
}

const char *bm_wire_error_code_name(Biomatch__V1__ErrorCode code)
{
    const ProtobufCEnumValue *ev =
        protobuf_c_enum_descriptor_get_value(&biomatch__v1__error_code__descriptor, (int)code);
    return ev ? ev->name : "ERROR_CODE_UNKNOWN";
}

int bm_wire_dlq_error(Biomatch__V1__ErrorCode code, const char *text, char *buf, size_t len)
{
    return snprintf(buf, len, "%s: %s", bm_wire_error_code_name(code), text ? text : "");
}
