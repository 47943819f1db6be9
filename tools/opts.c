/* See opts.h. */
#include "opts.h"

#include <stdio.h>
#include <string.h>

void bm_opts_usage(const char *usage, const char *summary, const struct bm_opt *opts, size_t n)
{
    printf("usage: %s\n\n", usage);
    if (summary != NULL)
        printf("%s\n\n", summary);
    printf("flags:\n");
    for (size_t i = 0; i < n; i++) {
        char left[64];
        snprintf(left, sizeof left, "%s%s%s", opts[i].name, opts[i].arg ? " " : "",
                 opts[i].arg ? opts[i].arg : "");
        if (strlen(left) > 28)
            printf("  %s\n  %-28s %s\n", left, "", opts[i].help);
        else
            printf("  %-28s %s\n", left, opts[i].help);
    }
    printf("  %-28s %s\n", "--help", "show this help");
}

int bm_opts_parse(const char *prog, int argc, char **argv, int first, const struct bm_opt *opts,
                  size_t n, const char **pos, size_t maxpos, size_t *npos, const char *usage,
                  const char *summary)
{
    *npos = 0;
    for (int i = first; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            bm_opts_usage(usage, summary, opts, n);
            return 1;
        }
        if (strncmp(a, "--", 2) != 0 || a[2] == '\0') {
            if (*npos >= maxpos) {
                fprintf(stderr, "%s: unexpected argument '%s' (see --help)\n", prog, a);
                return -1;
            }
            pos[(*npos)++] = a;
            continue;
        }
        const char *eq = strchr(a, '=');
        size_t len = eq ? (size_t)(eq - a) : strlen(a);
        const struct bm_opt *o = NULL;
        for (size_t k = 0; k < n; k++)
            if (strlen(opts[k].name) == len && strncmp(opts[k].name, a, len) == 0)
                o = &opts[k];
        if (o == NULL) {
            fprintf(stderr, "%s: unknown flag '%.*s' (see --help)\n", prog, (int)len, a);
            return -1;
        }
        if (o->arg == NULL) {
            if (eq != NULL) {
                fprintf(stderr, "%s: flag %s takes no value\n", prog, o->name);
                return -1;
            }
            *o->val = "1";
        } else if (eq != NULL) {
            *o->val = eq + 1;
        } else if (i + 1 < argc) {
            *o->val = argv[++i];
        } else {
            fprintf(stderr, "%s: flag %s needs a value (%s)\n", prog, o->name, o->arg);
            return -1;
        }
    }
    return 0;
}
