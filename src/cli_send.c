/* cli_send: `carrier send` (placeholder until the module lands). */
#include <stdio.h>

#include "cli.h"

int cli_send_main(int argc, char **argv)
{
	fprintf(stderr, "carrier send: not built yet\n");
	return 1;
}
