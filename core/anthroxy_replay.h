/* anthroxy_replay.h - `anthroxy replay`: recorded sessions (core/record.c's files) re-run
 * through each arm of an experiment, offline or against a real upstream, into
 * report.json, turns.csv and report.html (docs/experiments.md, "Replay and the report"). */
#ifndef ANTHROXY_REPLAY_H
#define ANTHROXY_REPLAY_H

/* `anthroxy replay --experiment FILE [--arms a,b] [--window N] [--upstream URL]
 *  [--max-tokens N] --out DIR RECORDING...`. Returns the process exit code (0, 1 on a
 * failure, 2 on bad usage). */
int ax_replay_main(int argc, char **argv);

#endif
