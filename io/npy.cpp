// .npy v1.0 writing (v2.0 for huge headers) and strict reading of v1.0-3.0, for the dtypes of
// NpyDtype; little-endian hosts only, like every machine sparsa runs on.
#include "io/npy.hpp"

#include "engine/error.hpp"

#include <bit>
#include <cctype>

namespace sparsa {

static_assert(std::endian::native == std::endian::little, "sparsa's .npy I/O assumes a little-endian host");

namespace {

constexpr uint8_t kMagic[6] = {0x93, 'N', 'U', 'M', 'P', 'Y'};
constexpr int64_t kMaxElements = int64_t{1} << 59;
constexpr const char* kSupported = "bool, uint8, int32, int64, uint64, float16, float32 or float64";

struct DtypeInfo {
    NpyDtype dtype;
    const char* name;
    const char* descr;
    size_t size;
};
constexpr DtypeInfo kDtypes[] = {
    {NpyDtype::boolean, "bool", "|b1", 1}, {NpyDtype::uint8, "uint8", "|u1", 1},
    {NpyDtype::int32, "int32", "<i4", 4},  {NpyDtype::int64, "int64", "<i8", 8},
    {NpyDtype::uint64, "uint64", "<u8", 8}, {NpyDtype::float16, "float16", "<f2", 2},
    {NpyDtype::float32, "float32", "<f4", 4}, {NpyDtype::float64, "float64", "<f8", 8},
};

const DtypeInfo& dtype_info(NpyDtype dtype) { return kDtypes[static_cast<size_t>(dtype)]; }

// The dtype of a descr string, or throws: unsupported or big-endian.
NpyDtype dtype_parse(const std::string& descr, const std::string& what) {
    for (const auto& info : kDtypes) {
        if (descr == info.descr) return info.dtype;
        // Byte-sized types have no byte order; accept either mark numpy might write.
        if (info.size == 1 && descr.size() == 3 && (descr[0] == '<' || descr[0] == '>') && descr.substr(1) == info.descr + 1) {
            return info.dtype;
        }
    }
    if (descr.size() >= 2 && descr[0] == '>') {
        throw Error(what + ": dtype '" + descr + "' is big-endian (save it little-endian: a.astype('<" + descr.substr(1) + "'))");
    }
    throw Error(what + ": dtype '" + descr + "' is not supported (use " + kSupported + ")");
}

// A strict reader of the header dict: {'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }
class HeaderParser {
public:
    HeaderParser(const std::string& text, const std::string& what) : s_(text), what_(what) {}

    NpyHeader parse() {
        NpyHeader h;
        bool have_descr = false, have_order = false, have_shape = false, fortran = false;
        std::string descr;
        skip_space();
        expect('{');
        skip_space();
        while (peek() != '}') {
            const std::string key = string_literal();
            skip_space();
            expect(':');
            skip_space();
            if (key == "descr") {
                if (have_descr) fail("'descr' given twice");
                if (peek() != '\'' && peek() != '"') fail("'descr' is not a string (structured dtypes are not supported; use " + std::string(kSupported) + ")");
                descr = string_literal();
                have_descr = true;
            } else if (key == "fortran_order") {
                if (have_order) fail("'fortran_order' given twice");
                fortran = boolean();
                have_order = true;
            } else if (key == "shape") {
                if (have_shape) fail("'shape' given twice");
                h.shape = tuple();
                have_shape = true;
            } else {
                fail("unknown key '" + key + "'");
            }
            skip_space();
            if (peek() == ',') {
                ++pos_;
                skip_space();
            } else if (peek() != '}') {
                fail("expected ',' or '}' at offset " + std::to_string(pos_));
            }
        }
        ++pos_;
        skip_space();
        if (pos_ != s_.size()) fail("text after the closing '}'");
        if (!have_descr || !have_order || !have_shape) fail("it needs 'descr', 'fortran_order' and 'shape'");
        h.dtype = dtype_parse(descr, what_);
        if (fortran) {
            throw Error(what_ + ": the array is in Fortran order (save it in C order: np.save(path, np.ascontiguousarray(a)))");
        }
        npy_shape_elements(h.shape, what_);
        return h;
    }

private:
    [[noreturn]] void fail(const std::string& why) const { throw Error(what_ + ": bad npy header: " + why); }
    char peek() const { return pos_ < s_.size() ? s_[pos_] : '\0'; }
    void skip_space() {
        while (pos_ < s_.size() && (s_[pos_] == ' ' || s_[pos_] == '\n' || s_[pos_] == '\t' || s_[pos_] == '\r')) ++pos_;
    }
    void expect(char c) {
        if (peek() != c) fail(std::string("expected '") + c + "' at offset " + std::to_string(pos_));
        ++pos_;
    }
    std::string string_literal() {
        const char quote = peek();
        if (quote != '\'' && quote != '"') fail("expected a quoted key or string at offset " + std::to_string(pos_));
        const size_t end = s_.find(quote, pos_ + 1);
        if (end == std::string::npos) fail("unterminated string");
        std::string text = s_.substr(pos_ + 1, end - pos_ - 1);
        if (text.find('\\') != std::string::npos) fail("escapes in strings are not supported");
        pos_ = end + 1;
        return text;
    }
    bool boolean() {
        if (s_.compare(pos_, 4, "True") == 0) {
            pos_ += 4;
            return true;
        }
        if (s_.compare(pos_, 5, "False") == 0) {
            pos_ += 5;
            return false;
        }
        fail("'fortran_order' is not True or False");
    }
    std::vector<int64_t> tuple() {
        std::vector<int64_t> dims;
        expect('(');
        skip_space();
        bool trailing_comma = false;
        while (peek() != ')') {
            if (!std::isdigit(static_cast<unsigned char>(peek()))) fail("'shape' holds something other than non-negative integers");
            int64_t value = 0;
            while (std::isdigit(static_cast<unsigned char>(peek()))) {
                if (value > (kMaxElements - 9) / 10) fail("a dimension of 'shape' is too large");
                value = value * 10 + (s_[pos_++] - '0');
            }
            if (peek() == 'L') ++pos_; // Python 2's long suffix
            dims.push_back(value);
            skip_space();
            trailing_comma = peek() == ',';
            if (trailing_comma) {
                ++pos_;
                skip_space();
            } else if (peek() != ')') {
                fail("expected ',' or ')' in 'shape'");
            }
        }
        ++pos_;
        if (dims.size() == 1 && !trailing_comma) fail("'shape' (n) is not a tuple (numpy writes (n,))");
        return dims;
    }

    const std::string& s_;
    std::string what_;
    size_t pos_ = 0;
};

} // namespace

size_t npy_dtype_size(NpyDtype dtype) { return dtype_info(dtype).size; }
const char* npy_dtype_name(NpyDtype dtype) { return dtype_info(dtype).name; }
const char* npy_dtype_descr(NpyDtype dtype) { return dtype_info(dtype).descr; }

int64_t NpyArray::size() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
}

int64_t npy_shape_elements(const std::vector<int64_t>& shape, const std::string& what) {
    for (int64_t d : shape) {
        if (d < 0) throw Error(what + ": shape " + npy_shape_text(shape) + " has a negative dimension");
    }
    int64_t n = 1;
    for (int64_t d : shape) {
        if (d != 0 && n > kMaxElements / d) throw Error(what + ": shape " + npy_shape_text(shape) + " is too large");
        n *= d;
    }
    return n;
}

std::string npy_shape_text(const std::vector<int64_t>& shape) {
    std::string text = "[";
    for (size_t i = 0; i < shape.size(); ++i) text += (i ? ", " : "") + std::to_string(shape[i]);
    return text + "]";
}

void npy_array_check_dtype(const NpyArray& array, NpyDtype dtype, const std::string& what) {
    if (array.dtype != dtype) {
        throw Error(what + ": dtype is " + npy_dtype_name(array.dtype) + ", expected " + npy_dtype_name(dtype));
    }
}

// [SECTION] bytes in, bytes out

std::vector<uint8_t> npy_header_encode(NpyDtype dtype, const std::vector<int64_t>& shape) {
    npy_shape_elements(shape, "npy header");
    std::string dict = std::string("{'descr': '") + npy_dtype_descr(dtype) + "', 'fortran_order': False, 'shape': (";
    for (size_t i = 0; i < shape.size(); ++i) dict += (i ? ", " : "") + std::to_string(shape[i]);
    dict += shape.size() == 1 ? ",), }" : "), }";
    // Pad with spaces and a final newline so the data starts on a 64-byte boundary.
    const bool v2 = dict.size() + 1 + 10 > 65535;
    const size_t preamble = v2 ? 12 : 10;
    dict.append((64 - (preamble + dict.size() + 1) % 64) % 64, ' ');
    dict += '\n';
    std::vector<uint8_t> out(kMagic, kMagic + 6);
    out.push_back(v2 ? 2 : 1);
    out.push_back(0);
    for (size_t i = 0; i < (v2 ? 4U : 2U); ++i) out.push_back(static_cast<uint8_t>(dict.size() >> (8 * i)));
    out.insert(out.end(), dict.begin(), dict.end());
    return out;
}

uint64_t npy_header_length(const uint8_t* bytes, size_t size, const std::string& what) {
    if (size < 6 || std::memcmp(bytes, kMagic, 6) != 0) {
        throw Error(what + ": not an npy file (it does not start with \\x93NUMPY): was it saved with np.save?");
    }
    if (size < 12) throw Error(what + ": truncated: the file ends inside the npy header");
    const int major = bytes[6], minor = bytes[7];
    if ((major != 1 && major != 2 && major != 3) || minor != 0) {
        throw Error(what + ": npy format version " + std::to_string(major) + "." + std::to_string(minor) +
                    " is not supported (sparsa reads 1.0, 2.0 and 3.0)");
    }
    if (major == 1) return 10 + (uint64_t{bytes[8]} | uint64_t{bytes[9]} << 8);
    return 12 + (uint64_t{bytes[8]} | uint64_t{bytes[9]} << 8 | uint64_t{bytes[10]} << 16 | uint64_t{bytes[11]} << 24);
}

NpyHeader npy_header_decode(const uint8_t* bytes, size_t size, const std::string& what) {
    const uint64_t length = npy_header_length(bytes, size, what);
    if (size < length) throw Error(what + ": truncated: the file ends inside the npy header");
    const size_t preamble = bytes[6] == 1 ? 10 : 12;
    const std::string text(reinterpret_cast<const char*>(bytes) + preamble, static_cast<size_t>(length) - preamble);
    NpyHeader h = HeaderParser(text, what).parse();
    h.data_offset = length;
    h.data_bytes = static_cast<uint64_t>(npy_shape_elements(h.shape, what)) * npy_dtype_size(h.dtype);
    return h;
}

std::vector<uint8_t> npy_encode(const NpyArray& array) {
    const uint64_t bytes = static_cast<uint64_t>(npy_shape_elements(array.shape, "npy array")) * npy_dtype_size(array.dtype);
    if (bytes != array.data.size()) {
        throw Error("npy array: shape " + npy_shape_text(array.shape) + " needs " + std::to_string(bytes) +
                    " bytes of data, but it holds " + std::to_string(array.data.size()));
    }
    std::vector<uint8_t> out = npy_header_encode(array.dtype, array.shape);
    out.insert(out.end(), array.data.begin(), array.data.end());
    return out;
}

NpyArray npy_decode(std::vector<uint8_t> bytes, const std::string& what) {
    // A file shorter than the fixed preamble is "not npy" when its magic is wrong, else truncated.
    const size_t probe = std::min<size_t>(bytes.size(), 6);
    if (!bytes.empty() && probe < 6 && std::memcmp(bytes.data(), kMagic, probe) == 0) {
        throw Error(what + ": truncated: the file ends inside the npy header");
    }
    NpyHeader h = npy_header_decode(bytes.data(), bytes.size(), what);
    const uint64_t found = bytes.size() - h.data_offset;
    if (found < h.data_bytes) {
        throw Error(what + ": truncated: expected " + std::to_string(h.data_bytes) + " bytes of data, found " +
                    std::to_string(found));
    }
    if (found > h.data_bytes) {
        throw Error(what + ": " + std::to_string(found - h.data_bytes) + " bytes after the data of shape " +
                    npy_shape_text(h.shape) + " (not a single .npy array?)");
    }
    NpyArray a;
    a.dtype = h.dtype;
    a.shape = std::move(h.shape);
    bytes.erase(bytes.begin(), bytes.begin() + static_cast<std::ptrdiff_t>(h.data_offset));
    a.data = std::move(bytes);
    return a;
}

// [SECTION] files

void npy_save(const NpyArray& array, const std::string& path) {
    const uint64_t bytes = static_cast<uint64_t>(npy_shape_elements(array.shape, path)) * npy_dtype_size(array.dtype);
    if (bytes != array.data.size()) {
        throw Error("cannot write '" + path + "': shape " + npy_shape_text(array.shape) + " needs " + std::to_string(bytes) +
                    " bytes of data, but the array holds " + std::to_string(array.data.size()));
    }
    NpyWriter writer(path, array.dtype, array.shape);
    writer.write(array.data.data(), array.data.size());
    writer.commit();
}

NpyArray npy_load(const std::string& path) { return npy_decode(InputFile(path).read_all(), path); }

NpyWriter::NpyWriter(const std::string& path, NpyDtype dtype, const std::vector<int64_t>& shape) : file_(path) {
    expected_ = static_cast<uint64_t>(npy_shape_elements(shape, path)) * npy_dtype_size(dtype);
    const std::vector<uint8_t> header = npy_header_encode(dtype, shape);
    file_.write(header.data(), header.size());
}

void NpyWriter::write(const void* data, size_t bytes) {
    if (bytes > expected_ - written_) {
        throw Error("cannot write '" + file_.path() + "': more data than its shape holds (" +
                    std::to_string(written_ + bytes) + " of " + std::to_string(expected_) + " bytes)");
    }
    file_.write(data, bytes);
    written_ += bytes;
}

void NpyWriter::commit() {
    if (written_ != expected_) {
        throw Error("cannot write '" + file_.path() + "': only " + std::to_string(written_) + " of its " +
                    std::to_string(expected_) + " bytes of data were given");
    }
    file_.commit();
}

} // namespace sparsa
