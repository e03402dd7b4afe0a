// .npz reading and writing: a stored (uncompressed) ZIP archive of .npy members, ZIP64 where
// sizes or offsets pass 4 GiB. Every offset and size read from a file is bounds-checked.
//
// Index: [SECTION] CRC-32, [SECTION] zip records, [SECTION] NpzWriter, [SECTION] NpzReader
#include "io/npz.hpp"

#include "engine/error.hpp"

#include <algorithm>
#include <array>
#include <cstring>
#include <unordered_set>

namespace sparsa {

// [SECTION] CRC-32

namespace {

// Slicing-by-8 tables: table[0] is the classic byte table, table[k] advances k more zero bytes.
std::array<std::array<uint32_t, 256>, 8> crc_tables_make() {
    std::array<std::array<uint32_t, 256>, 8> t{};
    for (uint32_t i = 0; i < 256; ++i) {
        uint32_t c = i;
        for (int k = 0; k < 8; ++k) c = (c & 1U) ? 0xEDB88320U ^ (c >> 1) : c >> 1;
        t[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; ++i) {
        for (size_t k = 1; k < 8; ++k) t[k][i] = (t[k - 1][i] >> 8) ^ t[0][t[k - 1][i] & 0xFFU];
    }
    return t;
}

const std::array<std::array<uint32_t, 256>, 8> kCrc = crc_tables_make();

} // namespace

uint32_t crc32_update(uint32_t crc, const void* data, size_t bytes) {
    const auto* p = static_cast<const uint8_t*>(data);
    uint32_t c = ~crc;
    for (; bytes >= 8; bytes -= 8, p += 8) {
        uint32_t lo = 0, hi = 0;
        std::memcpy(&lo, p, 4);
        std::memcpy(&hi, p + 4, 4);
        lo ^= c;
        c = kCrc[7][lo & 0xFF] ^ kCrc[6][(lo >> 8) & 0xFF] ^ kCrc[5][(lo >> 16) & 0xFF] ^ kCrc[4][lo >> 24] ^
            kCrc[3][hi & 0xFF] ^ kCrc[2][(hi >> 8) & 0xFF] ^ kCrc[1][(hi >> 16) & 0xFF] ^ kCrc[0][hi >> 24];
    }
    for (; bytes > 0; --bytes, ++p) c = kCrc[0][(c ^ *p) & 0xFF] ^ (c >> 8);
    return ~c;
}

// [SECTION] zip records

namespace {

constexpr uint32_t kLocalSig = 0x04034b50, kCentralSig = 0x02014b50, kEndSig = 0x06054b50;
constexpr uint32_t kEnd64Sig = 0x06064b50, kLocator64Sig = 0x07064b50;
constexpr uint64_t kMax32 = 0xFFFFFFFFULL;  // a 32-bit field at this value defers to ZIP64
constexpr uint16_t kMax16 = 0xFFFF;
constexpr size_t kLocalBytes = 30, kCentralBytes = 46, kEndBytes = 22, kEnd64Bytes = 56, kLocator64Bytes = 20;
constexpr uint16_t kDosDate = (0 << 9) | (1 << 5) | 1;   // 1980-01-01: files are reproducible
constexpr uint16_t kMadeBy = (3 << 8) | 45;              // unix, zip 4.5
constexpr uint32_t kFileMode = 0100644U << 16;           // -rw-r--r--

void put16(std::vector<uint8_t>& out, uint64_t v) {
    for (int i = 0; i < 2; ++i) out.push_back(static_cast<uint8_t>(v >> (8 * i)));
}
void put32(std::vector<uint8_t>& out, uint64_t v) {
    for (int i = 0; i < 4; ++i) out.push_back(static_cast<uint8_t>(v >> (8 * i)));
}
void put64(std::vector<uint8_t>& out, uint64_t v) {
    for (int i = 0; i < 8; ++i) out.push_back(static_cast<uint8_t>(v >> (8 * i)));
}
uint64_t get(const uint8_t* p, int bytes) {
    uint64_t v = 0;
    for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | p[i];
    return v;
}

std::string hex32(uint32_t v) {
    char text[16];
    std::snprintf(text, sizeof text, "0x%08x", v);
    return text;
}

} // namespace

// [SECTION] NpzWriter

NpzWriter::NpzWriter(const std::string& path, bool force_zip64) : file_(path), force_zip64_(force_zip64) {}

bool NpzWriter::member_zip64(const Member& m) const { return force_zip64_ || m.size >= kMax32; }

void NpzWriter::add(const std::string& name, const NpyArray& array) {
    begin(name, array.dtype, array.shape);
    write(array.data.data(), array.data.size());
    end();
}

void NpzWriter::begin(const std::string& name, NpyDtype dtype, const std::vector<int64_t>& shape) {
    if (open_) throw Error("cannot write '" + file_.path() + "': member '" + members_.back().name + "' is still open (internal error)");
    const std::string member_name = name + ".npy";
    for (const auto& m : members_) {
        if (m.name == member_name) throw Error("cannot write '" + file_.path() + "': array '" + name + "' added twice (internal error)");
    }
    if (member_name.size() > kMax16) throw Error("cannot write '" + file_.path() + "': array name too long");
    const std::vector<uint8_t> header = npy_header_encode(dtype, shape);
    Member m;
    m.name = member_name;
    m.offset = file_.size();
    expected_ = static_cast<uint64_t>(npy_shape_elements(shape, file_.path())) * npy_dtype_size(dtype);
    m.size = header.size() + expected_;
    const bool zip64 = member_zip64(m);
    std::vector<uint8_t> local;
    put32(local, kLocalSig);
    put16(local, zip64 ? 45 : 20);      // version needed
    put16(local, 0);                    // flags
    put16(local, 0);                    // method: stored
    put16(local, 0);                    // time
    put16(local, kDosDate);
    put32(local, 0);                    // CRC-32: patched by end()
    put32(local, zip64 ? kMax32 : m.size);
    put32(local, zip64 ? kMax32 : m.size);
    put16(local, m.name.size());
    put16(local, zip64 ? 20 : 0);
    local.insert(local.end(), m.name.begin(), m.name.end());
    if (zip64) {
        put16(local, 1);                // ZIP64 extra: uncompressed, compressed size
        put16(local, 16);
        put64(local, m.size);
        put64(local, m.size);
    }
    file_.write(local.data(), local.size());
    file_.write(header.data(), header.size());
    m.crc = crc32_update(0, header.data(), header.size());
    members_.push_back(std::move(m));
    open_ = true;
    written_ = 0;
}

void NpzWriter::write(const void* data, size_t bytes) {
    if (!open_) throw Error("cannot write '" + file_.path() + "': no member is open (internal error)");
    if (bytes > expected_ - written_) {
        throw Error("cannot write '" + file_.path() + "': more data for '" + members_.back().name + "' than its shape holds (internal error)");
    }
    file_.write(data, bytes);
    members_.back().crc = crc32_update(members_.back().crc, data, bytes);
    written_ += bytes;
}

void NpzWriter::end() {
    if (!open_) throw Error("cannot write '" + file_.path() + "': no member is open (internal error)");
    const Member& m = members_.back();
    if (written_ != expected_) {
        throw Error("cannot write '" + file_.path() + "': '" + m.name + "' got " + std::to_string(written_) + " of its " +
                    std::to_string(expected_) + " bytes of data (internal error)");
    }
    std::vector<uint8_t> crc;
    put32(crc, m.crc);
    file_.write_at(m.offset + 14, crc.data(), crc.size());
    open_ = false;
}

void NpzWriter::commit() {
    if (open_) throw Error("cannot write '" + file_.path() + "': member '" + members_.back().name + "' is still open (internal error)");
    const uint64_t cd_offset = file_.size();
    std::vector<uint8_t> cd;
    for (const Member& m : members_) {
        const bool big_size = member_zip64(m), big_offset = force_zip64_ || m.offset >= kMax32;
        std::vector<uint8_t> extra;
        if (big_size || big_offset) {
            put16(extra, 1);
            put16(extra, (big_size ? 16 : 0) + (big_offset ? 8 : 0));
            if (big_size) {
                put64(extra, m.size);
                put64(extra, m.size);
            }
            if (big_offset) put64(extra, m.offset);
        }
        put32(cd, kCentralSig);
        put16(cd, kMadeBy);
        put16(cd, big_size || big_offset ? 45 : 20);
        put16(cd, 0);                   // flags
        put16(cd, 0);                   // method: stored
        put16(cd, 0);                   // time
        put16(cd, kDosDate);
        put32(cd, m.crc);
        put32(cd, big_size ? kMax32 : m.size);
        put32(cd, big_size ? kMax32 : m.size);
        put16(cd, m.name.size());
        put16(cd, extra.size());
        put16(cd, 0);                   // comment
        put16(cd, 0);                   // disk
        put16(cd, 0);                   // internal attributes
        put32(cd, kFileMode);
        put32(cd, big_offset ? kMax32 : m.offset);
        cd.insert(cd.end(), m.name.begin(), m.name.end());
        cd.insert(cd.end(), extra.begin(), extra.end());
    }
    const uint64_t count = members_.size(), cd_size = cd.size();
    const bool zip64 = force_zip64_ || count >= kMax16 || cd_size >= kMax32 || cd_offset >= kMax32;
    if (zip64) {
        const uint64_t end64_offset = cd_offset + cd_size;
        put32(cd, kEnd64Sig);
        put64(cd, kEnd64Bytes - 12);    // size of the rest of this record
        put16(cd, kMadeBy);
        put16(cd, 45);
        put32(cd, 0);                   // this disk
        put32(cd, 0);                   // disk of the central directory
        put64(cd, count);
        put64(cd, count);
        put64(cd, cd_size);
        put64(cd, cd_offset);
        put32(cd, kLocator64Sig);
        put32(cd, 0);                   // disk of the ZIP64 end record
        put64(cd, end64_offset);
        put32(cd, 1);                   // disks in all
    }
    put32(cd, kEndSig);
    put16(cd, 0);
    put16(cd, 0);
    put16(cd, zip64 ? kMax16 : count);
    put16(cd, zip64 ? kMax16 : count);
    put32(cd, zip64 ? kMax32 : cd_size);
    put32(cd, zip64 ? kMax32 : cd_offset);
    put16(cd, 0);                       // comment
    file_.write(cd.data(), cd.size());
    file_.commit();
}

// [SECTION] NpzReader

NpzReader::NpzReader(const std::string& path) : file_(path) {
    const uint64_t size = file_.size();
    auto starts_like_zip = [&] {
        uint8_t sig[4] = {0, 0, 0, 0};
        if (size >= 4) file_.read_at(0, sig, 4);
        return get(sig, 4) == kLocalSig;
    };
    auto not_zip = [&]() -> Error {
        if (starts_like_zip()) {
            return Error(path + ": truncated: the zip archive has no end-of-central-directory record "
                                "(was the write cut short? write the file again)");
        }
        return Error(path + ": not a zip archive (no end-of-central-directory record): is it an .npz file?");
    };
    if (size < kEndBytes) throw not_zip();

    // The end record: the last 22 bytes plus a comment of up to 65535 bytes.
    const uint64_t tail_size = std::min<uint64_t>(size, kEndBytes + kMax16);
    std::vector<uint8_t> tail(static_cast<size_t>(tail_size));
    file_.read_at(size - tail_size, tail.data(), tail.size());
    int64_t end_at = -1;
    for (int64_t i = static_cast<int64_t>(tail_size - kEndBytes); i >= 0; --i) {
        const uint8_t* p = tail.data() + i;
        if (get(p, 4) == kEndSig && static_cast<uint64_t>(i) + kEndBytes + get(p + 20, 2) == tail_size) {
            end_at = i;
            break;
        }
    }
    if (end_at < 0) throw not_zip();
    const uint8_t* end = tail.data() + end_at;
    const uint64_t end_offset = size - tail_size + static_cast<uint64_t>(end_at);
    uint64_t disk = get(end + 4, 2), cd_disk = get(end + 6, 2), disk_entries = get(end + 8, 2);
    uint64_t entries = get(end + 10, 2), cd_size = get(end + 12, 4), cd_offset = get(end + 16, 4);
    uint64_t cd_limit = end_offset;   // the central directory ends before this

    // ZIP64: a locator right before the end record points at the ZIP64 end record.
    uint8_t locator[kLocator64Bytes] = {};
    if (end_offset >= kLocator64Bytes) file_.read_at(end_offset - kLocator64Bytes, locator, kLocator64Bytes);
    if (get(locator, 4) == kLocator64Sig) {
        const uint64_t end64_offset = get(locator + 8, 8);
        if (get(locator + 4, 4) != 0 || get(locator + 16, 4) != 1) {
            throw Error(path + ": multi-disk zip archives are not supported");
        }
        if (end64_offset > end_offset - kLocator64Bytes || end_offset - kLocator64Bytes - end64_offset < kEnd64Bytes) {
            throw Error(path + ": corrupt zip archive (the ZIP64 end record lies outside the file)");
        }
        uint8_t end64[kEnd64Bytes];
        file_.read_at(end64_offset, end64, kEnd64Bytes);
        if (get(end64, 4) != kEnd64Sig) throw Error(path + ": corrupt zip archive (no ZIP64 end record where its locator points)");
        disk = get(end64 + 16, 4);
        cd_disk = get(end64 + 20, 4);
        disk_entries = get(end64 + 24, 8);
        entries = get(end64 + 32, 8);
        cd_size = get(end64 + 40, 8);
        cd_offset = get(end64 + 48, 8);
        cd_limit = end64_offset;
    } else if (entries == kMax16 || cd_size == kMax32 || cd_offset == kMax32) {
        throw Error(path + ": corrupt zip archive (ZIP64 sizes announced but no ZIP64 end record)");
    }
    if (disk != 0 || cd_disk != 0 || disk_entries != entries) throw Error(path + ": multi-disk zip archives are not supported");
    if (cd_offset > cd_limit || cd_size > cd_limit - cd_offset) {
        throw Error(path + ": truncated or corrupt: the central directory runs past the end of the file");
    }
    if (entries > cd_size / kCentralBytes) throw Error(path + ": corrupt zip archive (more entries than the central directory holds)");

    // The central directory: one record per member.
    std::vector<uint8_t> cd(static_cast<size_t>(cd_size));
    file_.read_at(cd_offset, cd.data(), cd.size());
    size_t at = 0;
    std::unordered_set<std::string> seen;
    for (uint64_t e = 0; e < entries; ++e) {
        if (cd.size() - at < kCentralBytes || get(cd.data() + at, 4) != kCentralSig) {
            throw Error(path + ": corrupt zip archive (central directory entry " + std::to_string(e) + " is damaged)");
        }
        const uint8_t* r = cd.data() + at;
        const uint64_t flags = get(r + 8, 2), method = get(r + 10, 2), name_len = get(r + 28, 2);
        const uint64_t extra_len = get(r + 30, 2), comment_len = get(r + 32, 2);
        uint64_t csize = get(r + 20, 4), usize = get(r + 24, 4), local = get(r + 42, 4);
        if (cd.size() - at - kCentralBytes < name_len + extra_len + comment_len) {
            throw Error(path + ": corrupt zip archive (central directory entry " + std::to_string(e) + " runs past its end)");
        }
        Member m;
        m.name.assign(reinterpret_cast<const char*>(r + kCentralBytes), static_cast<size_t>(name_len));
        m.crc = static_cast<uint32_t>(get(r + 16, 4));
        const std::string what = path + ": member '" + m.name + "'";
        // ZIP64 extra field: the 64-bit values of the 32-bit fields that are 0xFFFFFFFF, in order.
        const uint8_t* x = r + kCentralBytes + name_len;
        for (uint64_t xi = 0; xi + 4 <= extra_len;) {
            const uint64_t id = get(x + xi, 2), len = get(x + xi + 2, 2);
            if (xi + 4 + len > extra_len) throw Error(what + ": corrupt extra field in the central directory");
            if (id == 1) {
                uint64_t fi = 0;
                for (uint64_t* field : {&usize, &csize, &local}) {
                    if (*field != kMax32) continue;
                    if (fi + 8 > len) throw Error(what + ": corrupt ZIP64 extra field");
                    *field = get(x + xi + 4 + fi, 8);
                    fi += 8;
                }
            }
            xi += 4 + len;
        }
        if (flags & 1U) throw Error(what + " is encrypted (sparsa reads plain .npz files from np.savez)");
        if (method == 8) throw Error(what + ": compressed .npz is not supported: save with np.savez, not np.savez_compressed");
        if (method != 0) {
            throw Error(what + ": compression method " + std::to_string(method) +
                        " is not supported (sparsa reads .npz files stored uncompressed, as np.savez writes them)");
        }
        if (csize != usize) throw Error(what + ": corrupt zip archive (stored member with two different sizes)");
        if (!seen.insert(m.name).second) throw Error(what + " appears twice in the archive");
        // The local header must match, and the data must lie before the central directory.
        if (local > cd_offset || cd_offset - local < kLocalBytes) {
            throw Error(path + ": truncated: member '" + m.name + "' runs past the end of the file");
        }
        uint8_t h[kLocalBytes];
        file_.read_at(local, h, kLocalBytes);
        const uint64_t local_name_len = get(h + 26, 2), local_extra_len = get(h + 28, 2);
        if (get(h, 4) != kLocalSig) throw Error(what + ": corrupt zip archive (no local header at offset " + std::to_string(local) + ")");
        if (local_name_len != name_len || get(h + 8, 2) != method) {
            throw Error(what + ": corrupt zip archive (its local header disagrees with the central directory)");
        }
        m.data = local + kLocalBytes + local_name_len + local_extra_len;
        m.size = usize;
        if (m.data > cd_offset || m.size > cd_offset - m.data) {
            throw Error(path + ": truncated: member '" + m.name + "' runs past the end of the file");
        }
        std::string local_name(static_cast<size_t>(local_name_len), '\0');
        file_.read_at(local + kLocalBytes, local_name.data(), local_name.size());
        const bool sizes_deferred = (get(h + 6, 2) & 8U) != 0;  // flag 3: sizes follow the data
        const uint64_t local_size = get(h + 22, 4);
        if (local_name != m.name ||
            (!sizes_deferred && (get(h + 14, 4) != m.crc || (local_size != kMax32 && local_size != m.size)))) {
            throw Error(what + ": corrupt zip archive (its local header disagrees with the central directory)");
        }
        members_.push_back(std::move(m));
        at += kCentralBytes + name_len + extra_len + comment_len;
    }
    if (at != cd.size()) throw Error(path + ": corrupt zip archive (unexpected bytes after the central directory entries)");
}

std::vector<std::string> NpzReader::names() const {
    std::vector<std::string> out;
    for (const auto& m : members_) {
        const bool npy = m.name.size() >= 4 && m.name.compare(m.name.size() - 4, 4, ".npy") == 0;
        out.push_back(npy ? m.name.substr(0, m.name.size() - 4) : m.name);
    }
    return out;
}

bool NpzReader::has(const std::string& name) const {
    return std::any_of(members_.begin(), members_.end(), [&](const Member& m) { return m.name == name + ".npy"; });
}

const NpzReader::Member& NpzReader::member(const std::string& name) const {
    for (const auto& m : members_) {
        if (m.name == name + ".npy") return m;
    }
    throw Error(path() + ": no array '" + name + "' in the archive");
}

std::string NpzReader::member_what(const Member& m) const { return path() + ": member '" + m.name + "'"; }

NpyArray NpzReader::read(const std::string& name) const {
    const Member& m = member(name);
    std::vector<uint8_t> bytes(static_cast<size_t>(m.size));
    file_.read_at(m.data, bytes.data(), bytes.size());
    const uint32_t crc = crc32_update(0, bytes.data(), bytes.size());
    if (crc != m.crc) {
        throw Error(member_what(m) + " is corrupt (CRC-32 " + hex32(crc) + ", the archive says " + hex32(m.crc) +
                    "): write the file again");
    }
    return npy_decode(std::move(bytes), member_what(m));
}

NpzReader::Stream NpzReader::stream(const std::string& name) const {
    const Member& m = member(name);
    Stream s;
    s.file_ = &file_;
    s.what_ = member_what(m);
    s.pos_ = m.data;
    s.end_ = m.data + m.size;
    s.expected_crc_ = m.crc;
    // The header: its fixed part says how long the rest is.
    std::vector<uint8_t> head(static_cast<size_t>(std::min<uint64_t>(m.size, 12)));
    s.fill(head.data(), head.size());
    const uint64_t length = npy_header_length(head.data(), head.size(), s.what_);
    if (length > m.size) throw Error(s.what_ + ": truncated: the member ends inside the npy header");
    head.resize(static_cast<size_t>(length));
    s.fill(head.data() + 12, head.size() - 12);
    s.header_ = npy_header_decode(head.data(), head.size(), s.what_);
    if (m.size - length != s.header_.data_bytes) {
        throw Error(s.what_ + ": " + (m.size - length < s.header_.data_bytes ? "truncated: " : "") + "expected " +
                    std::to_string(s.header_.data_bytes) + " bytes of data, found " + std::to_string(m.size - length));
    }
    return s;
}

void NpzReader::Stream::fill(uint8_t* data, size_t bytes) {
    while (bytes > 0) {
        if (buffer_pos_ == buffer_.size()) {
            buffer_.resize(static_cast<size_t>(std::min<uint64_t>(end_ - pos_, uint64_t{1} << 20)));
            buffer_pos_ = 0;
            if (buffer_.empty()) throw Error(what_ + ": read past the end of the member (internal error)");
            file_->read_at(pos_, buffer_.data(), buffer_.size());
            crc_ = crc32_update(crc_, buffer_.data(), buffer_.size());
            pos_ += buffer_.size();
            // Checked once the last byte is in, before any of the last piece is used.
            if (pos_ == end_ && crc_ != expected_crc_) {
                throw Error(what_ + " is corrupt (CRC-32 " + hex32(crc_) + ", the archive says " + hex32(expected_crc_) +
                            "): write the file again");
            }
        }
        const size_t take = std::min(bytes, buffer_.size() - buffer_pos_);
        std::memcpy(data, buffer_.data() + buffer_pos_, take);
        buffer_pos_ += take;
        data += take;
        bytes -= take;
    }
}

void NpzReader::Stream::read(void* data, size_t bytes) { fill(static_cast<uint8_t*>(data), bytes); }

} // namespace sparsa
