/*
 * libFuzzer harness for the configuration parser: any bytes as a config
 * file must give either a configuration or a list of errors, each with a
 * line inside the file; never a crash, a leak or an unbounded loop.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "conf.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct conf_errors errs = { 0 };
	struct carrier_conf *c;
	char *text = malloc(size + 1);
	unsigned lines = 1;

	if (text == NULL)
		return 0;
	memcpy(text, data, size);
	text[size] = '\0';
	for (size_t i = 0; i < size && text[i]; i++)
		lines += text[i] == '\n';
	c = conf_load_string("fuzz.conf", text, &errs);
	if (c == NULL && errs.n == 0)
		abort();        /* refused without saying why */
	for (size_t i = 0; i < errs.n; i++)
		if (errs.v[i].line > lines)
			abort();    /* an error pointing past the end */
	conf_errors_clear(&errs);
	conf_free(&c);
	free(text);
	return 0;
}
