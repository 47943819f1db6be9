/* Fuzz the configuration parser (bm_conf_parse) on YAML text, with no
 * environment. Invariants: never crashes or leaks; a configuration that
 * parses dumps (secrets redacted) without crashing. */
#include <stdio.h>
#include <stdlib.h>

#include "conf/conf.h"
#include "common/err.h"
#include "fuzz.h"

int bm_fuzz_config(const uint8_t *data, size_t size)
{
    char err[512];
    struct bm_conf *c = bm_conf_parse((const char *)data, size, "fuzz", NULL, err, sizeof err);
    if (c == NULL)
        return 0;
    char *dump = NULL;
    BM_FUZZ_CHECK(bm_conf_dump(c, &dump) == BM_OK && dump != NULL);
    free(dump);
    bm_conf_destroy(c);
    return 0;
}

#ifndef BM_FUZZ_REPLAY
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    return bm_fuzz_config(data, size);
}
#endif
