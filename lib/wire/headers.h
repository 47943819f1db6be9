/* Kafka record headers of the wire contract: content-type, traceparent and
 * the dlq error header (docs/wire.md, "Headers").
 *
 * Headers are advisory: the value bytes alone decide how a record decodes
 * (envelope.h). content-type lets tools and humans tell what a record is;
 * traceparent (W3C Trace Context) is copied from a job to its tasks,
 * partials and result; 'error' explains a dlq record.
 * Thread: any (pure functions). */
#ifndef BM_WIRE_HEADERS_H
#define BM_WIRE_HEADERS_H

#include <stddef.h>

#include <protobuf-c/protobuf-c.h>

#include "biomatch.pb-c.h"

/* bus/bus.h defines the same names with the same values; the guards keep
 * a file that includes both free of redefinitions. */
#ifndef BM_HDR_CONTENT_TYPE
#define BM_HDR_CONTENT_TYPE "content-type"
#endif
#ifndef BM_HDR_TRACEPARENT
#define BM_HDR_TRACEPARENT "traceparent"
#endif
#ifndef BM_HDR_ERROR
#define BM_HDR_ERROR "error"
#endif

#define BM_CT_RAW "application/x-protobuf"
#define BM_CT_SR "application/vnd.confluent.protobuf"

/* Write "application/x-protobuf; proto=<full message name>" (the value
 * biomatch puts on every record it produces, which is always raw) into
 * buf. Returns the length it needs (snprintf semantics). */
int bm_wire_content_type(const ProtobufCMessageDescriptor *desc, char *buf, size_t len);

/* 1 when a received content-type header (value 'v' of 'len' bytes, NULL
 * for an absent header) does not contradict message 'desc': absent; or
 * media type application/x-protobuf or application/vnd.confluent.protobuf
 * (case-insensitive), with a proto= parameter, if any, naming desc. */
int bm_wire_content_type_ok(const char *v, size_t len, const ProtobufCMessageDescriptor *desc);

/* 1 when 'v' (len bytes) is a well-formed W3C traceparent:
 * version "00": exactly "00-<32 hex trace-id>-<16 hex parent-id>-<2 hex flags>",
 * lowercase hex, ids not all zero; a later version (not "ff"): the same
 * first 55 characters, then nothing or '-' and more. */
int bm_wire_traceparent_valid(const char *v, size_t len);

/* The enum name of 'code' ("ERROR_CODE_MALFORMED"), or "ERROR_CODE_UNKNOWN"
 * for a value this build does not know. Static, never NULL. */
const char *bm_wire_error_code_name(Biomatch__V1__ErrorCode code);

/* Write the dlq 'error' header value "<ERROR_CODE_NAME>: <text>" into buf
 * (snprintf semantics). */
int bm_wire_dlq_error(Biomatch__V1__ErrorCode code, const char *text, char *buf, size_t len);

#endif /* BM_WIRE_HEADERS_H */
