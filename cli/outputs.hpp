// The files one command writes, as one set: checked before any work, written to temporary files,
// renamed into place together at the end, and the command's summary printed only after that.
#pragma once

#include "io/atomic_file.hpp"

#include <cstdio>
#include <memory>
#include <string>
#include <vector>

namespace sparsa::cli {

// Usage, in a command:
//     OutputSet outputs("compile");
//     outputs.input(script, "the script being compiled");
//     if (out) outputs.output("-o", *out);           // refused here, before any work, when it
//     ...work...                                     // is an input, another output, a folder,
//     mask_set_save(set, *out);                      // or in a folder that cannot be written
//     outputs.say("wrote %s\n", out->c_str());
//     outputs.commit();                              // renames every file, then prints
// Every AtomicFile committed while the OutputSet lives (on this thread) waits for commit(): when
// a later output fails, none appears. Errors are sparsa::Error, starting "COMMAND: ".
class OutputSet {
public:
    explicit OutputSet(std::string command);
    ~OutputSet();
    OutputSet(const OutputSet&) = delete;
    OutputSet& operator=(const OutputSet&) = delete;

    // A file the command reads; `what` says what it is ("the script being compiled").
    void input(const std::string& path, const std::string& what);
    // A file the command writes, named by `option` ("-o").
    void output(const std::string& option, const std::string& path);
    // A folder the command writes files into (made when missing; removed again if the command
    // fails and it is still empty). Returns the folder's path.
    const std::string& folder(const std::string& option, const std::string& path);

    // Text printed when commit() succeeds: on stdout, or on stderr when an output is stdout.
    void say(const char* format, ...) __attribute__((format(printf, 2, 3)));
    // Renames every file written into place, then prints what say() gathered.
    void commit();

private:
    struct Entry {
        std::string option;  // "-o"; "" for an input
        std::string path;
        std::string what;    // for an input: what it is
        bool exists = false, char_device = false;
        unsigned long long dev = 0, ino = 0;
        std::string normal;  // the final target's path, absolute and normalised
        int fd = -1;         // for /dev/stdout-like names: the descriptor
    };
    Entry identify(const std::string& path) const;
    void check_against(const Entry& added) const;

    std::string command_;
    std::vector<Entry> inputs_, outputs_;
    std::vector<std::string> made_folders_;  // made by folder(), removed when left empty
    std::string text_;
    bool to_stderr_ = false, committed_ = false;
    std::unique_ptr<AtomicFileGroup> group_;  // reset first in ~OutputSet: its files go before its folders
};

} // namespace sparsa::cli
