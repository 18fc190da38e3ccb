/* main.c - the one binary: FastCGI server, FastCGI worker, CGI program and admin commands. */
#include "cmd.h"

int main(int argc, char **argv)
{
	return cmd_main(argc, argv);
}
